// The one way the console talks to the server: the public /admin and /v1 APIs, with the
// admin key the user logged in with (kept in this tab's sessionStorage, sent as a Bearer
// header, never put in a URL).

const KEY_ITEM = "lmaas.adminKey";

export function getKey(): string | null {
  return sessionStorage.getItem(KEY_ITEM);
}

export function setKey(key: string | null): void {
  if (key === null) sessionStorage.removeItem(KEY_ITEM);
  else sessionStorage.setItem(KEY_ITEM, key);
}

export class ApiError extends Error {
  status: number;
  code: string | null;
  param: string | null;

  constructor(status: number, message: string, code: string | null = null, param: string | null = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

/** A readable message from an error body: OpenAI's envelope, or FastAPI's validation list. */
export function describeError(status: number, body: unknown): ApiError {
  const b = body as any;
  if (b && typeof b === "object" && b.error && typeof b.error.message === "string") {
    const param = typeof b.error.param === "string" ? b.error.param : null;
    return new ApiError(status, b.error.message, b.error.code ?? null, param);
  }
  if (b && Array.isArray(b.detail)) {
    const parts = b.detail.map((d: any) => {
      const where = Array.isArray(d.loc) ? d.loc.filter((p: unknown) => p !== "body").join(".") : "";
      return where ? `${where}: ${d.msg}` : String(d.msg);
    });
    return new ApiError(status, parts.join("; "));
  }
  if (b && typeof b.detail === "string") return new ApiError(status, b.detail);
  const reasons: Record<number, string> = {
    401: "not logged in, or the key is not valid",
    403: "this key may not do that",
    404: "not found",
    409: "refused: it conflicts with the current state",
    413: "too large",
    429: "too many requests: try again shortly",
    503: "the server is not ready (starting, restarting or shutting down)",
  };
  return new ApiError(status, reasons[status] ?? `the server answered HTTP ${status}`);
}

function headers(json: boolean): Record<string, string> {
  const h: Record<string, string> = {};
  const key = getKey();
  if (key) h["Authorization"] = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(res: Response): Promise<ApiError> {
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  const err = describeError(res.status, body);
  if (res.status === 401) window.dispatchEvent(new CustomEvent("lmaas:unauthorized", { detail: err.message }));
  return err;
}

async function send(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: "omit",
    });
  } catch (e) {
    if ((e as Error).name === "AbortError") throw e;
    throw new ApiError(0, "cannot reach the server");
  }
  if (!res.ok) throw await failure(res);
  return res;
}

export async function api<T = any>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const res = await send(method, path, body, signal);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const get = <T = any>(path: string, signal?: AbortSignal) => api<T>("GET", path, undefined, signal);

/** A query string from the set values of ``params``. */
export function query(params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

export const enc = encodeURIComponent;

/** The Content-Type the model store expects for a file, from its name. */
export function uploadType(name: string): string {
  const n = name.toLowerCase();
  if (n.endsWith(".tar")) return "application/x-tar";
  if (n.endsWith(".tar.gz") || n.endsWith(".tgz")) return "application/gzip";
  if (n.endsWith(".zip")) return "application/zip";
  return "application/octet-stream"; // a GGUF file
}

export interface Upload {
  done: Promise<any>;
  abort: () => void;
}

/** POST a file as the raw body with upload progress (fetch has none: XMLHttpRequest does). */
export function uploadFile(path: string, file: File, onProgress: (sent: number, total: number) => void): Upload {
  const xhr = new XMLHttpRequest();
  const done = new Promise<any>((resolve, reject) => {
    xhr.open("POST", path);
    const key = getKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.setRequestHeader("Content-Type", uploadType(file.name));
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => {
      let body: unknown = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(describeError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, "the upload was interrupted"));
    xhr.onabort = () => reject(new ApiError(0, "the upload was cancelled"));
    xhr.send(file);
  });
  return { done, abort: () => xhr.abort() };
}

/** Download with the key in a header: the answer becomes a blob the browser saves. */
export async function download(path: string, fallbackName: string): Promise<void> {
  const res = await send("GET", path);
  const disposition = res.headers.get("Content-Disposition") ?? "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = match ? match[1] : fallbackName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** POST with ``stream: true`` and yield each server-sent event's JSON until ``[DONE]``. */
export async function* streamEvents(path: string, body: unknown, signal: AbortSignal): AsyncGenerator<any> {
  const res = await send("POST", path, body, signal);
  if (!res.body) throw new ApiError(0, "the answer has no body");
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event && event.error) throw describeError(500, event);
      yield event;
    }
  }
}
