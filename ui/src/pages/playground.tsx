// Chat with a served model through /v1/chat/completions (streamed, or beam search), with the
// sampling parameters and JSON-schema output; an embeddings similarity check (/v1/embeddings).
import { useRef, useState } from "preact/hooks";
import { api, get, streamEvents } from "../api";
import { ErrorBox, Page, useLoad } from "../components";
import { num, secs } from "../format";

interface Turn {
  role: "user" | "assistant";
  content: string;
  stats?: string;
  beams?: string[];
}

interface Params {
  system: string;
  temperature: string;
  top_p: string;
  top_k: string;
  min_p: string;
  repetition_penalty: string;
  presence_penalty: string;
  frequency_penalty: string;
  max_tokens: string;
  seed: string;
  beam: boolean;
  beam_width: string;
  n: string;
  length_penalty: string;
  schema_on: boolean;
  schema: string;
}

const DEFAULTS: Params = {
  system: "",
  temperature: "0.7",
  top_p: "",
  top_k: "",
  min_p: "",
  repetition_penalty: "",
  presence_penalty: "",
  frequency_penalty: "",
  max_tokens: "128",
  seed: "",
  beam: false,
  beam_width: "4",
  n: "1",
  length_penalty: "1.0",
  schema_on: false,
  schema: '{\n  "type": "object",\n  "properties": {"answer": {"type": "string"}},\n  "required": ["answer"]\n}',
};

const NUMERIC: (keyof Params)[] = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "max_tokens", "seed"];

function requestBody(model: string, p: Params, turns: Turn[]): any {
  const messages: any[] = [];
  if (p.system.trim()) messages.push({ role: "system", content: p.system });
  for (const t of turns) messages.push({ role: t.role, content: t.content });
  const body: any = { model, messages };
  for (const k of NUMERIC) {
    const v = String(p[k]).trim();
    if (v !== "") body[k] = k === "top_k" || k === "max_tokens" || k === "seed" ? parseInt(v, 10) : parseFloat(v);
  }
  if (p.beam) {
    for (const k of ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed"]) delete body[k];
    body.use_beam_search = true;
    body.beam_width = parseInt(p.beam_width, 10);
    body.n = parseInt(p.n, 10);
    body.length_penalty = parseFloat(p.length_penalty);
  } else {
    body.stream = true;
    body.stream_options = { include_usage: true };
  }
  if (p.schema_on) {
    let schema: unknown;
    try {
      schema = JSON.parse(p.schema);
    } catch (e) {
      throw new Error(`the JSON schema does not parse: ${(e as Error).message}`);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "output", schema } };
  }
  return body;
}

function ParamInput({ p, set, name, label, step = "any" }: { p: Params; set: (p: Params) => void; name: keyof Params; label: string; step?: string }) {
  return (
    <label>
      {label}
      <input type="number" step={step} value={p[name] as string} onInput={(e) => set({ ...p, [name]: (e.target as HTMLInputElement).value })} />
    </label>
  );
}

function Chat({ models }: { models: any[] }) {
  const chatModels = models.filter((m) => !m.capabilities || m.capabilities.includes("generate"));
  const [model, setModel] = useState("");
  const [p, setP] = useState<Params>(DEFAULTS);
  const [turns, setTurns] = useState<Turn[]>([]);
  const [input, setInput] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const abort = useRef<AbortController | null>(null);
  const chosen = model || chatModels[0]?.id || "";

  const send = async () => {
    const text = input.trim();
    if (!text || !chosen) return;
    setError(null);
    const history: Turn[] = [...turns, { role: "user", content: text }];
    let body: any;
    try {
      body = requestBody(chosen, p, history);
    } catch (e) {
      setError(e);
      return;
    }
    setInput("");
    setTurns([...history, { role: "assistant", content: "" }]);
    setBusy(true);
    const ctl = new AbortController();
    abort.current = ctl;
    const start = performance.now();
    let first: number | null = null;
    let content = "";
    let outTokens: number | null = null;
    const update = (stats?: string, beams?: string[]) => setTurns([...history, { role: "assistant", content, stats, beams }]);
    try {
      if (p.beam) {
        const r = await api("POST", "/v1/chat/completions", body, ctl.signal);
        const beams = r.choices.map((c: any) => c.message?.content ?? "");
        content = beams[0] ?? "";
        const took = (performance.now() - start) / 1000;
        update(`beam search, ${r.choices.length} of width ${body.beam_width} · ${secs(took)} · ${r.usage?.completion_tokens ?? "?"} tokens`, beams.length > 1 ? beams : undefined);
      } else {
        for await (const chunk of streamEvents("/v1/chat/completions", body, ctl.signal)) {
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            if (first === null) first = performance.now();
            content += delta;
            update();
          }
          if (chunk.usage) outTokens = chunk.usage.completion_tokens;
        }
        const end = performance.now();
        const ttft = first === null ? null : (first - start) / 1000;
        const decode = first === null ? 0 : (end - first) / 1000;
        const rate = outTokens && outTokens > 1 && decode > 0 ? (outTokens - 1) / decode : null;
        update(`TTFT ${secs(ttft)} · ${rate === null ? "—" : num(rate, 1)} tokens/s · ${outTokens ?? "?"} tokens`);
      }
    } catch (e) {
      if ((e as Error).name === "AbortError") update("stopped");
      else {
        setError(e);
        update("failed");
      }
    } finally {
      setBusy(false);
      abort.current = null;
    }
  };

  return (
    <section class="card playground" aria-labelledby="chat-title">
      <h2 id="chat-title">Chat</h2>
      <div class="play-grid">
        <div class="conversation">
          <label>
            Model{" "}
            <select value={chosen} onChange={(e) => setModel((e.target as HTMLSelectElement).value)} aria-label="Chat model">
              {chatModels.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.id}
                  {m.ready === false ? " (not ready)" : ""}
                </option>
              ))}
            </select>
          </label>
          <ol class="turns" aria-live="polite">
            {turns.map((t, i) => (
              <li key={i} class={`turn ${t.role}`}>
                <div class="who">{t.role}</div>
                <div class="content">{t.content || (busy && i === turns.length - 1 ? "…" : "")}</div>
                {t.beams && (
                  <ol class="beams">
                    {t.beams.map((b, j) => (
                      <li key={j}>{b}</li>
                    ))}
                  </ol>
                )}
                {t.stats && <div class="stats">{t.stats}</div>}
              </li>
            ))}
          </ol>
          <ErrorBox error={error} onClose={() => setError(null)} />
          <form
            class="composer"
            onSubmit={(e) => {
              e.preventDefault();
              send();
            }}
          >
            <label for="chat-input" class="sr-only">
              Message
            </label>
            <textarea
              id="chat-input"
              rows={3}
              value={input}
              placeholder="Message (Ctrl+Enter sends)"
              onInput={(e) => setInput((e.target as HTMLTextAreaElement).value)}
              onKeyDown={(e) => {
                if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
                  e.preventDefault();
                  send();
                }
              }}
            />
            <div class="row">
              <button type="submit" class="primary" disabled={busy || !input.trim() || !chosen}>
                Send
              </button>
              {busy && (
                <button type="button" onClick={() => abort.current?.abort()}>
                  Stop
                </button>
              )}
              <button type="button" disabled={busy || !turns.length} onClick={() => setTurns([])}>
                Clear
              </button>
            </div>
          </form>
        </div>
        <fieldset class="params">
          <legend>Parameters</legend>
          <label class="block">
            System prompt
            <textarea rows={2} value={p.system} onInput={(e) => setP({ ...p, system: (e.target as HTMLTextAreaElement).value })} />
          </label>
          <ParamInput p={p} set={setP} name="temperature" label="temperature" />
          <ParamInput p={p} set={setP} name="top_p" label="top_p" />
          <ParamInput p={p} set={setP} name="top_k" label="top_k" step="1" />
          <ParamInput p={p} set={setP} name="min_p" label="min_p" />
          <ParamInput p={p} set={setP} name="repetition_penalty" label="repetition_penalty" />
          <ParamInput p={p} set={setP} name="presence_penalty" label="presence_penalty" />
          <ParamInput p={p} set={setP} name="frequency_penalty" label="frequency_penalty" />
          <ParamInput p={p} set={setP} name="max_tokens" label="max_tokens" step="1" />
          <ParamInput p={p} set={setP} name="seed" label="seed" step="1" />
          <label class="check">
            <input type="checkbox" checked={p.beam} onChange={(e) => setP({ ...p, beam: (e.target as HTMLInputElement).checked })} /> Beam search (not streamed)
          </label>
          {p.beam && (
            <>
              <ParamInput p={p} set={setP} name="beam_width" label="beam_width" step="1" />
              <ParamInput p={p} set={setP} name="n" label="n (beams returned)" step="1" />
              <ParamInput p={p} set={setP} name="length_penalty" label="length_penalty" />
            </>
          )}
          <label class="check">
            <input type="checkbox" checked={p.schema_on} onChange={(e) => setP({ ...p, schema_on: (e.target as HTMLInputElement).checked })} /> JSON-schema output
          </label>
          {p.schema_on && (
            <label class="block">
              Schema
              <textarea rows={6} class="mono" value={p.schema} onInput={(e) => setP({ ...p, schema: (e.target as HTMLTextAreaElement).value })} />
            </label>
          )}
        </fieldset>
      </div>
    </section>
  );
}

function cosine(a: number[], b: number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

function Similarity({ models }: { models: any[] }) {
  const embedModels = models.filter((m) => m.capabilities?.includes("embed"));
  const [model, setModel] = useState("");
  const [texts, setTexts] = useState("The cat sat on the mat.\nA cat is sitting on a rug.\nStock prices fell sharply today.");
  const [matrix, setMatrix] = useState<number[][] | null>(null);
  const [lines, setLines] = useState<string[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const chosen = model || embedModels[0]?.id || "";
  if (!embedModels.length) return null;
  const compare = async () => {
    const input = texts.split("\n").map((t) => t.trim()).filter(Boolean);
    setBusy(true);
    setError(null);
    try {
      const r = await api("POST", "/v1/embeddings", { model: chosen, input });
      const vectors: number[][] = r.data.map((d: any) => d.embedding);
      setLines(input);
      setMatrix(vectors.map((a) => vectors.map((b) => cosine(a, b))));
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section class="card" aria-labelledby="sim-title">
      <h2 id="sim-title">Embeddings similarity</h2>
      <div class="row">
        <label>
          Model{" "}
          <select value={chosen} onChange={(e) => setModel((e.target as HTMLSelectElement).value)}>
            {embedModels.map((m) => (
              <option key={m.id} value={m.id}>
                {m.id}
              </option>
            ))}
          </select>
        </label>
      </div>
      <label class="block">
        Texts, one a line
        <textarea rows={4} value={texts} onInput={(e) => setTexts((e.target as HTMLTextAreaElement).value)} />
      </label>
      <div class="row">
        <button class="primary" disabled={busy} onClick={compare}>
          Compare
        </button>
      </div>
      <ErrorBox error={error} onClose={() => setError(null)} />
      {matrix && (
        <div class="table-wrap">
          <table class="similarity">
            <caption>Cosine similarity</caption>
            <thead>
              <tr>
                <th />
                {lines.map((_, i) => (
                  <th key={i}>#{i + 1}</th>
                ))}
              </tr>
            </thead>
            <tbody>
              {matrix.map((row, i) => (
                <tr key={i}>
                  <th class="wrap">
                    #{i + 1} {lines[i]}
                  </th>
                  {row.map((v, j) => (
                    <td key={j} class={i === j ? "muted" : v > 0.7 ? "high" : ""}>
                      {v.toFixed(3)}
                    </td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

export function Playground() {
  const models = useLoad((signal) => get("/v1/models", signal), []);
  const list: any[] = models.data?.data ?? [];
  return (
    <Page title="Playground">
      <ErrorBox error={models.error} />
      {!models.loading && list.length === 0 && <p class="muted">No model is served.</p>}
      {list.length > 0 && <Chat models={list} />}
      <Similarity models={list} />
    </Page>
  );
}
