// The model store: /admin/models (models, versions, aliases, uploads, downloads, deletes).
import { useRef, useState } from "preact/hooks";
import { api, download, enc, get, uploadFile, type Upload } from "../api";
import { Badge, ConfirmButton, ErrorBox, KeyValues, Notice, Page, Progress, useAction, useLoad } from "../components";
import { bytes, num, shortDigest, when } from "../format";

const NAME_RE = /^[a-z0-9][a-z0-9._-]*$/i;

function UploadBox({ models, initial, onDone }: { models: string[]; initial: string | null; onDone: (name: string) => void }) {
  const [name, setName] = useState(initial ?? "");
  const [file, setFile] = useState<File | null>(null);
  const [progress, setProgress] = useState<[number, number] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [over, setOver] = useState(false);
  const [done, setDone] = useState<string | null>(null);
  const current = useRef<Upload | null>(null);
  const input = useRef<HTMLInputElement>(null);

  const choose = (f: File | null | undefined) => {
    if (!f) return;
    setFile(f);
    setDone(null);
    setError(null);
    if (!name) setName(f.name.replace(/\.(gguf|tar\.gz|tgz|tar|zip)$/i, "").toLowerCase().replace(/[^a-z0-9._-]/g, "-"));
  };
  const start = async () => {
    if (!file) return;
    setError(null);
    setDone(null);
    setProgress([0, file.size]);
    const up = uploadFile(`/admin/models/${enc(name)}/versions`, file, (sent, total) => setProgress([sent, total]));
    current.current = up;
    try {
      const v = await up.done;
      setDone(`${v.model} version ${v.number} (${v.format}, ${bytes(v.size_bytes)})`);
      setFile(null);
      onDone(v.model);
    } catch (e) {
      setError(e);
    } finally {
      current.current = null;
      setProgress(null);
    }
  };
  return (
    <section class="card" aria-labelledby="upload-title">
      <h2 id="upload-title">Upload a version</h2>
      <div
        class={over ? "drop over" : "drop"}
        onDragOver={(e) => {
          e.preventDefault();
          setOver(true);
        }}
        onDragLeave={() => setOver(false)}
        onDrop={(e) => {
          e.preventDefault();
          setOver(false);
          choose(e.dataTransfer?.files?.[0]);
        }}
      >
        <p>Drop a GGUF file, or a Hugging Face folder as .tar, .tar.gz or .zip, here, or</p>
        <button onClick={() => input.current?.click()}>Choose a file…</button>
        <input
          ref={input}
          type="file"
          class="hidden-file"
          aria-label="Model file"
          accept=".gguf,.tar,.tar.gz,.tgz,.zip"
          onChange={(e) => choose((e.target as HTMLInputElement).files?.[0])}
        />
        {file && (
          <p>
            <strong>{file.name}</strong> ({bytes(file.size)})
          </p>
        )}
      </div>
      <div class="row">
        <label>
          Model name{" "}
          <input list="model-names" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} placeholder="my-model" />
          <datalist id="model-names">
            {models.map((m) => (
              <option key={m} value={m} />
            ))}
          </datalist>
        </label>
        <button class="primary" disabled={!file || !NAME_RE.test(name) || progress !== null} onClick={start}>
          Upload
        </button>
        {progress && <button onClick={() => current.current?.abort()}>Cancel</button>}
      </div>
      {progress && <Progress value={progress[1] ? progress[0] / progress[1] : 0} label={`${bytes(progress[0])} of ${bytes(progress[1])}`} />}
      <ErrorBox error={error} onClose={() => setError(null)} />
      {done && <Notice>Uploaded {done}.</Notice>}
    </section>
  );
}

function Evaluations({ evals }: { evals: any[] | null | undefined }) {
  if (!evals || !evals.length) return <span class="muted">none</span>;
  return (
    <ul class="evals">
      {evals.map((e) => (
        <li key={e.run_id}>
          <a href={`#/jobs/${enc(e.run_id)}`}>{e.eval_name}</a>: {e.result_counts?.passed ?? 0} passed, {e.result_counts?.failed ?? 0} failed
          {e.per_testing_criteria_results?.map((c: any) => (
            <span key={c.testing_criteria} class="muted">
              {" "}
              · {c.testing_criteria}
              {c.metrics ? " " + Object.entries(c.metrics).map(([k, v]) => `${k} ${num(v as number, 3)}`).join(", ") : ""}
            </span>
          ))}
        </li>
      ))}
    </ul>
  );
}

function ModelDetail({ name, onGone }: { name: string; onGone: () => void }) {
  const model = useLoad(async (signal) => {
    const m = await get(`/admin/models/${enc(name)}`, signal);
    // Evaluations are on each version's own answer.
    const versions = await Promise.all(
      (m.versions ?? []).slice(0, 50).map((v: any) => get(`/admin/models/${enc(name)}/versions/${v.number}`, signal).catch(() => v)),
    );
    return { ...m, versions };
  }, [name]);
  const [run, busy, error, clear] = useAction();
  const [alias, setAlias] = useState("");
  const [target, setTarget] = useState("");
  const m = model.data;
  if (model.error) return <ErrorBox error={model.error} />;
  if (!m) return <p class="muted">Loading…</p>;
  const versions: any[] = m.versions ?? [];
  return (
    <section class="card" aria-labelledby="model-title">
      <h2 id="model-title">{m.name}</h2>
      <KeyValues rows={[["description", m.description], ["created", when(m.created_at)], ["latest", m.latest === null ? "—" : `v${m.latest}`]]} />
      <ErrorBox error={error} onClose={clear} />
      <h3>Aliases</h3>
      <ul class="aliases">
        {Object.entries(m.aliases as Record<string, number>).map(([a, v]) => (
          <li key={a}>
            <code>
              {m.name}:{a}
            </code>{" "}
            → v{v}{" "}
            {a !== "latest" && (
              <button class="small" disabled={busy} onClick={() => run(() => api("DELETE", `/admin/models/${enc(name)}/aliases/${enc(a)}`)).then((ok) => ok && model.reload())}>
                Remove
              </button>
            )}
          </li>
        ))}
      </ul>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          run(() => api("PUT", `/admin/models/${enc(name)}/aliases/${enc(alias)}`, { version: Number(target) })).then((ok) => {
            if (ok) {
              setAlias("");
              model.reload();
            }
          });
        }}
      >
        <label>
          Alias <input value={alias} required onInput={(e) => setAlias((e.target as HTMLInputElement).value)} placeholder="production" />
        </label>
        <label>
          Version{" "}
          <select value={target} required onChange={(e) => setTarget((e.target as HTMLSelectElement).value)}>
            <option value="">—</option>
            {versions.map((v) => (
              <option key={v.number} value={v.number}>
                v{v.number}
              </option>
            ))}
          </select>
        </label>
        <button type="submit" disabled={busy || !alias || !target}>
          Set alias
        </button>
      </form>
      <h3>Versions</h3>
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th>version</th>
              <th>format</th>
              <th>size</th>
              <th>sha256</th>
              <th>created</th>
              <th>state</th>
              <th>evaluations</th>
              <th>
                <span class="sr-only">actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {versions.map((v) => (
              <tr key={v.number}>
                <td>
                  v{v.number} {v.aliases?.length ? <span class="muted">({v.aliases.join(", ")})</span> : null}
                </td>
                <td>
                  {v.format}
                  {v.quantization ? ` ${v.quantization}` : ""}
                  {v.architecture ? <div class="muted">{v.architecture}</div> : null}
                </td>
                <td>{bytes(v.size_bytes)}</td>
                <td>
                  <code title={v.digest}>{shortDigest(v.digest)}</code>
                </td>
                <td>{when(v.created_at)}</td>
                <td>
                  <Badge state={v.state} />
                  {v.error && <div class="muted">{v.error}</div>}
                </td>
                <td>
                  <Evaluations evals={v.evaluations} />
                </td>
                <td class="actions-cell">
                  <button class="small" disabled={busy} onClick={() => run(() => download(`/admin/models/${enc(name)}/versions/${v.number}/content`, `${name}-v${v.number}`))}>
                    Download
                  </button>
                  <ConfirmButton
                    small
                    label="Delete"
                    confirm={`Delete v${v.number}?`}
                    disabled={busy}
                    onConfirm={() => run(() => api("DELETE", `/admin/models/${enc(name)}/versions/${v.number}`)).then((ok) => ok && model.reload())}
                  />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <div class="row">
        <ConfirmButton
          label="Delete the model"
          confirm={`Delete ${name} and all its versions?`}
          disabled={busy}
          onConfirm={() => run(() => api("DELETE", `/admin/models/${enc(name)}`)).then((ok) => ok && onGone())}
        />
      </div>
    </section>
  );
}

export function Models({ name }: { name: string | null }) {
  const list = useLoad((signal) => get("/admin/models", signal), []);
  const models: any[] = list.data?.data ?? [];
  const [generation, setGeneration] = useState(0);
  return (
    <Page title="Models">
      <ErrorBox error={list.error} />
      <div class="split">
        <section class="card" aria-labelledby="store-title">
          <h2 id="store-title">Store</h2>
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>model</th>
                  <th>latest</th>
                  <th>aliases</th>
                  <th>created</th>
                </tr>
              </thead>
              <tbody>
                {models.map((m) => (
                  <tr key={m.name} class={m.name === name ? "selected" : ""}>
                    <td>
                      <a href={`#/models/${enc(m.name)}`}>{m.name}</a>
                    </td>
                    <td>{m.latest === null ? "—" : `v${m.latest}`}</td>
                    <td>
                      {Object.entries(m.aliases as Record<string, number>)
                        .map(([a, v]) => `${a}→v${v}`)
                        .join(", ") || "—"}
                    </td>
                    <td>{when(m.created_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {!list.loading && models.length === 0 && <p class="muted">The store is empty.</p>}
        </section>
        <UploadBox
          models={models.map((m) => m.name)}
          initial={name}
          onDone={(n) => {
            list.reload();
            setGeneration((g) => g + 1);
            location.hash = `#/models/${enc(n)}`;
          }}
        />
      </div>
      {name && (
        <ModelDetail
          key={`${name}:${generation}`}
          name={name}
          onGone={() => {
            list.reload();
            location.hash = "#/models";
          }}
        />
      )}
    </Page>
  );
}
