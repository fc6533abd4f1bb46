// API keys: /admin/keys (create: the secret shown once; list; revoke).
import { useState } from "preact/hooks";
import { api, enc, get } from "../api";
import { Badge, ConfirmButton, ErrorBox, Page, useAction, useLoad } from "../components";
import { ago, when } from "../format";

function CreateKey({ onCreated }: { onCreated: () => void }) {
  const [name, setName] = useState("");
  const [scope, setScope] = useState("inference");
  const [models, setModels] = useState("");
  const [rpm, setRpm] = useState("");
  const [tpm, setTpm] = useState("");
  const [secret, setSecret] = useState<{ id: string; key: string } | null>(null);
  const [copied, setCopied] = useState(false);
  const [run, busy, error, clear] = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    const body: any = { name, scope };
    const list = models.split(/[,\s]+/).filter(Boolean);
    if (list.length) body.models = list;
    if (rpm) body.rpm = parseInt(rpm, 10);
    if (tpm) body.tpm = parseInt(tpm, 10);
    run(async () => {
      const k = await api("POST", "/admin/keys", body);
      setSecret({ id: k.id, key: k.key });
      setCopied(false);
      setName("");
      onCreated();
    });
  };
  return (
    <section class="card" aria-labelledby="new-key-title">
      <h2 id="new-key-title">Create a key</h2>
      <form class="row" onSubmit={submit}>
        <label>
          Name <input value={name} maxLength={200} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Scope{" "}
          <select value={scope} onChange={(e) => setScope((e.target as HTMLSelectElement).value)}>
            <option value="inference">inference</option>
            <option value="admin">admin</option>
          </select>
        </label>
        <label>
          Models <input value={models} placeholder="all" onInput={(e) => setModels((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Requests/min <input type="number" min={1} value={rpm} placeholder="no limit" onInput={(e) => setRpm((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Tokens/min <input type="number" min={1} value={tpm} placeholder="no limit" onInput={(e) => setTpm((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" class="primary" disabled={busy}>
          Create
        </button>
      </form>
      <ErrorBox error={error} onClose={clear} />
      {secret && (
        <div class="secret" role="status">
          <p>
            Key <code>{secret.id}</code> was created. Copy its secret now: it is not shown again.
          </p>
          <code class="secret-value" data-testid="new-key">
            {secret.key}
          </code>
          <div class="row">
            <button
              onClick={() =>
                navigator.clipboard
                  ?.writeText(secret.key)
                  .then(() => setCopied(true))
                  .catch(() => setCopied(false))
              }
            >
              {copied ? "Copied" : "Copy"}
            </button>
            <button onClick={() => setSecret(null)}>Done</button>
          </div>
        </div>
      )}
    </section>
  );
}

export function Keys() {
  const list = useLoad((signal) => get("/admin/keys", signal), []);
  const [run, busy, error, clear] = useAction();
  const keys: any[] = list.data?.data ?? [];
  return (
    <Page title="Keys">
      <CreateKey onCreated={list.reload} />
      <ErrorBox error={list.error ?? error} onClose={clear} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th>id</th>
              <th>name</th>
              <th>scope</th>
              <th>models</th>
              <th>limits</th>
              <th>created</th>
              <th>last used</th>
              <th>state</th>
              <th>
                <span class="sr-only">actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.map((k) => (
              <tr key={k.id} data-key-id={k.id}>
                <td>
                  <code>{k.id}</code>
                </td>
                <td>{k.name || "—"}</td>
                <td>{k.scope}</td>
                <td>{k.models ? k.models.join(", ") : "all"}</td>
                <td>
                  {k.rpm ? `${k.rpm} req/min` : ""}
                  {k.rpm && k.tpm ? ", " : ""}
                  {k.tpm ? `${k.tpm} tok/min` : ""}
                  {!k.rpm && !k.tpm ? "none" : ""}
                </td>
                <td>{when(k.created_at)}</td>
                <td>{ago(k.last_used_at)}</td>
                <td>{k.revoked_at ? <Badge state="revoked" /> : <Badge state="active" />}</td>
                <td>
                  {!k.revoked_at && (
                    <ConfirmButton
                      small
                      label="Revoke"
                      confirm={`Revoke ${k.id} for good?`}
                      disabled={busy}
                      onConfirm={() => run(() => api("POST", `/admin/keys/${enc(k.id)}/revoke`)).then((ok) => ok && list.reload())}
                    />
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {!list.loading && keys.length === 0 && <p class="muted">No key: the server is open to this machine.</p>}
    </Page>
  );
}
