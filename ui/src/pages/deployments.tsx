// What is served: /admin/deployments (replicas, scale, roll to an alias, undeploy, autoscaling).
import { useState } from "preact/hooks";
import { api, enc, get } from "../api";
import { Badge, ConfirmButton, ErrorBox, KeyValues, Page, useAction, useLoad } from "../components";
import { bytes, num, when } from "../format";

function Replicas({ replicas }: { replicas: any[] }) {
  if (!replicas.length) return <p class="muted">No replica.</p>;
  return (
    <div class="table-wrap">
      <table class="replicas">
        <thead>
          <tr>
            <th>#</th>
            <th>state</th>
            <th>node</th>
            <th>version</th>
            <th>restarts</th>
            <th>outstanding</th>
            <th>last error</th>
          </tr>
        </thead>
        <tbody>
          {replicas.map((r) => (
            <tr key={r.id} data-replica-state={r.state}>
              <td title={r.id}>{r.index}</td>
              <td>
                <Badge state={r.state} />
              </td>
              <td>{r.node}</td>
              <td>{r.version === null ? "—" : `v${r.version}`}</td>
              <td>{r.restarts}</td>
              <td>{r.outstanding}</td>
              <td class="wrap">{r.last_error ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Autoscaling({ d, run, busy, reload }: { d: any; run: (fn: () => Promise<unknown>) => Promise<boolean>; busy: boolean; reload: () => void }) {
  const a = d.autoscaling;
  const [min, setMin] = useState(String(a?.config?.min_replicas ?? 1));
  const [max, setMax] = useState(String(a?.config?.max_replicas ?? 1));
  const [target, setTarget] = useState(String(a?.config?.target_ongoing_requests ?? 2));
  const save = (body: unknown) => run(() => api("PATCH", `/admin/deployments/${enc(d.name)}`, body)).then((ok) => ok && reload());
  return (
    <details class="autoscaling" open={!!a}>
      <summary>Autoscaling {a ? `(on: ${a.config.min_replicas}–${a.config.max_replicas} replicas)` : "(off)"}</summary>
      {a && (
        <>
          <KeyValues
            rows={[
              ["desired replicas", a.desired_replicas],
              ["average ongoing requests", num(a.average_ongoing_requests)],
              ["last decision", a.reason],
              ["target ongoing requests", a.config.target_ongoing_requests],
              ["upscale / downscale delay", `${a.config.upscale_delay_s} s / ${a.config.downscale_delay_s} s`],
            ]}
          />
          <h4>Decisions</h4>
          {a.events.length === 0 ? (
            <p class="muted">None yet.</p>
          ) : (
            <div class="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th>at</th>
                    <th>change</th>
                    <th>reason</th>
                    <th>ongoing</th>
                    <th>queued</th>
                    <th>oldest wait</th>
                  </tr>
                </thead>
                <tbody>
                  {[...a.events].reverse().map((e: any, i: number) => (
                    <tr key={i}>
                      <td>{when(e.at)}</td>
                      <td>
                        {e.direction} {e.from_replicas}→{e.to_replicas}
                      </td>
                      <td class="wrap">{e.reason}</td>
                      <td>{e.ongoing_requests}</td>
                      <td>{e.queued_requests}</td>
                      <td>{num(e.oldest_wait_s)} s</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          save({ autoscaling: { ...(a?.config ?? {}), min_replicas: Number(min), max_replicas: Number(max), target_ongoing_requests: Number(target) } });
        }}
      >
        <label>
          min <input type="number" min={0} max={64} value={min} onInput={(e) => setMin((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          max <input type="number" min={1} max={64} value={max} onInput={(e) => setMax((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          target ongoing{" "}
          <input type="number" min={0.1} step="any" value={target} onInput={(e) => setTarget((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" disabled={busy}>
          {a ? "Update autoscaling" : "Turn autoscaling on"}
        </button>
        {a && (
          <button type="button" disabled={busy} onClick={() => save({ autoscaling: null })}>
            Turn off
          </button>
        )}
      </form>
    </details>
  );
}

function Deployment({ d, reload }: { d: any; reload: () => void }) {
  const [run, busy, error, clear] = useAction();
  const [replicas, setReplicas] = useState(String(d.replicas));
  const [ref, setRef] = useState("");
  const modelName: string | null = d.model ? String(d.model).split(":")[0] : null;
  const store = useLoad(async (signal) => (modelName ? get(`/admin/models/${enc(modelName)}`, signal) : null), [modelName]);
  const patch = (body: unknown) => run(() => api("PATCH", `/admin/deployments/${enc(d.name)}`, body)).then((ok) => ok && reload());
  const refs: string[] = store.data
    ? [...Object.keys(store.data.aliases ?? {}).map((a) => `${store.data.name}:${a}`), ...(store.data.versions ?? []).map((v: any) => `${store.data.name}:${v.number}`)]
    : [];
  return (
    <article class="card deployment" data-deployment={d.name} aria-labelledby={`dep-${d.name}`}>
      <header class="card-head">
        <h2 id={`dep-${d.name}`}>{d.name}</h2>
        <Badge state={d.state} />
        <span class="muted" data-testid="ready-count">
          {d.ready_replicas}/{d.replicas} ready
        </span>
      </header>
      <KeyValues
        rows={[
          ["model", d.model ?? d.path],
          ["version", d.version === null ? "—" : `v${d.version}`],
          ["follows", d.follows],
          ["source", d.source],
          ["created", when(d.created_at)],
          ["resources", d.resources ? `${d.resources.cpu_threads} threads, ${bytes(d.resources.memory_bytes)}${d.resources.measured ? "" : " (estimated)"}` : null],
          ["last error", d.last_error],
        ]}
      />
      <ErrorBox error={error} onClose={clear} />
      <Replicas replicas={d.replica_status} />
      <div class="row">
        <form
          class="row"
          onSubmit={(e) => {
            e.preventDefault();
            patch({ replicas: Number(replicas) });
          }}
        >
          <label>
            Replicas{" "}
            <input
              type="number"
              min={0}
              max={64}
              value={replicas}
              disabled={!!d.autoscaling}
              aria-label={`Replicas of ${d.name}`}
              onInput={(e) => setReplicas((e.target as HTMLInputElement).value)}
            />
          </label>
          <button type="submit" disabled={busy || !!d.autoscaling} title={d.autoscaling ? "the autoscaler decides the replicas" : ""}>
            Scale
          </button>
        </form>
        {refs.length > 0 && (
          <form
            class="row"
            onSubmit={(e) => {
              e.preventDefault();
              patch({ model: ref });
            }}
          >
            <label>
              Roll to{" "}
              <select value={ref} onChange={(e) => setRef((e.target as HTMLSelectElement).value)}>
                <option value="">—</option>
                {refs.map((r) => (
                  <option key={r} value={r}>
                    {r}
                  </option>
                ))}
              </select>
            </label>
            <button type="submit" disabled={busy || !ref}>
              Roll
            </button>
          </form>
        )}
        <ConfirmButton
          label="Undeploy"
          confirm={`Stop serving ${d.name}?`}
          disabled={busy}
          onConfirm={() => run(() => api("DELETE", `/admin/deployments/${enc(d.name)}`)).then((ok) => ok && reload())}
        />
      </div>
      <Autoscaling d={d} run={run} busy={busy} reload={reload} />
    </article>
  );
}

function NewDeployment({ onDone }: { onDone: () => void }) {
  const [model, setModel] = useState("");
  const [name, setName] = useState("");
  const [replicas, setReplicas] = useState("1");
  const [run, busy, error, clear] = useAction();
  const store = useLoad((signal) => get("/admin/models", signal), []);
  const refs: string[] = (store.data?.data ?? []).flatMap((m: any) => Object.keys(m.aliases ?? {}).map((a) => `${m.name}:${a}`));
  return (
    <details class="card">
      <summary>Deploy a model</summary>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          const body: any = { model, replicas: Number(replicas) };
          if (name) body.name = name;
          run(() => api("POST", "/admin/deployments", body)).then((ok) => ok && onDone());
        }}
      >
        <label>
          Model{" "}
          <input list="deploy-refs" required value={model} onInput={(e) => setModel((e.target as HTMLInputElement).value)} placeholder="name:alias" />
          <datalist id="deploy-refs">
            {refs.map((r) => (
              <option key={r} value={r} />
            ))}
          </datalist>
        </label>
        <label>
          Served name <input value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} placeholder="(the model's name)" />
        </label>
        <label>
          Replicas <input type="number" min={0} max={64} value={replicas} onInput={(e) => setReplicas((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" class="primary" disabled={busy || !model}>
          Deploy
        </button>
      </form>
      <ErrorBox error={error} onClose={clear} />
    </details>
  );
}

export function Deployments() {
  const list = useLoad((signal) => get("/admin/deployments", signal), [], 3000);
  const pool = list.data?.pool;
  const data: any[] = list.data?.data ?? [];
  return (
    <Page title="Deployments">
      <ErrorBox error={list.error} />
      {pool && (
        <p class="muted">
          {pool.node}: {pool.cpu_threads_used}/{pool.cpu_threads} CPU threads, {bytes(pool.memory_bytes_used)} of {bytes(pool.memory_bytes)} memory,{" "}
          {pool.replicas} replicas placed.
        </p>
      )}
      <NewDeployment onDone={list.reload} />
      {!list.loading && data.length === 0 && <p class="muted">Nothing is deployed.</p>}
      {data.map((d) => (
        <Deployment key={d.name} d={d} reload={list.reload} />
      ))}
    </Page>
  );
}
