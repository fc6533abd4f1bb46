// Jobs: /admin/jobs (batches, eval runs, fine-tuning, quantization), their event logs, loss
// curves from the fine-tuning step events, evaluations of the versions a job made, cancel.
import { useEffect, useMemo, useState } from "preact/hooks";
import { api, enc, get, query } from "../api";
import { LineChart } from "../chart";
import { Badge, ConfirmButton, ErrorBox, Json, KeyValues, Page, Progress, useAction, useLoad } from "../components";
import { num, secs, when } from "../format";

const ACTIVE = new Set(["queued", "in_progress", "finalizing", "cancelling"]);

/** Every event of the job, polled while it is active. */
function useEvents(id: string, active: boolean): { events: any[]; error: unknown } {
  const [events, setEvents] = useState<any[]>([]);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let stop = false;
    let after = 0;
    let all: any[] = [];
    let timer: number | undefined;
    const poll = async () => {
      try {
        for (;;) {
          const page = await get(`/admin/jobs/${enc(id)}/events${query({ after, limit: 1000 })}`);
          if (stop) return;
          if (page.data.length) {
            all = all.concat(page.data);
            after = page.last_seq ?? after;
            setEvents(all);
          }
          if (!page.has_more) break;
        }
        setError(null);
      } catch (e) {
        if (!stop) setError(e);
      }
      if (!stop && active) timer = window.setTimeout(poll, 2000);
    };
    poll();
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [id, active]);
  return { events, error };
}

function LossCurves({ events }: { events: any[] }) {
  const steps = useMemo(() => events.filter((e) => e.metrics && typeof e.metrics.train_loss === "number" && !e.metrics.checkpoint), [events]);
  if (!steps.length) return null;
  const xs = steps.map((e) => e.metrics.step as number);
  const train = steps.map((e) => e.metrics.train_loss as number);
  const valid = steps.map((e) => (typeof e.metrics.valid_loss === "number" ? e.metrics.valid_loss : null));
  return (
    <LineChart
      title="Loss"
      time={false}
      xLabel="step"
      spanGaps
      lines={[{ label: "train" }, { label: "validation", color: "#dc2626" }]}
      data={[xs, train, valid]}
      format={(v) => num(v, 3)}
    />
  );
}

/** Version numbers a job's result names for its model (quantized or fine-tuned versions). */
function versionsOf(result: any): [string, number][] {
  const found: [string, number][] = [];
  const visit = (v: any, model: string | null) => {
    if (!v || typeof v !== "object") return;
    const m = typeof v.model === "string" ? v.model : model;
    if (m && typeof v.number === "number") found.push([m, v.number]);
    if (m && typeof v.version === "number") found.push([m, v.version]);
    for (const child of Object.values(v)) visit(child, m);
  };
  visit(result, null);
  const seen = new Set<string>();
  return found.filter(([m, n]) => {
    const k = `${m}:${n}`;
    return seen.has(k) ? false : (seen.add(k), true);
  });
}

function VersionEvaluations({ result }: { result: any }) {
  const refs = useMemo(() => versionsOf(result), [JSON.stringify(result ?? null)]);
  const loaded = useLoad(
    (signal) => Promise.all(refs.map(([m, n]) => get(`/admin/models/${enc(m)}/versions/${n}`, signal).catch(() => null))),
    [refs.map((r) => r.join(":")).join(",")],
  );
  const versions = (loaded.data ?? []).filter(Boolean) as any[];
  const names = [...new Set(versions.flatMap((v) => (v.evaluations ?? []).map((e: any) => e.eval_name as string)))];
  if (!versions.length) return null;
  return (
    <section aria-labelledby="eval-title">
      <h3 id="eval-title">Versions and their evaluations</h3>
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th>version</th>
              <th>format</th>
              <th>quantization</th>
              {names.map((n) => (
                <th key={n}>{n}</th>
              ))}
            </tr>
          </thead>
          <tbody>
            {versions.map((v) => (
              <tr key={`${v.model}:${v.number}`}>
                <td>
                  <a href={`#/models/${enc(v.model)}`}>
                    {v.model} v{v.number}
                  </a>
                </td>
                <td>{v.format}</td>
                <td>{v.quantization ?? "—"}</td>
                {names.map((n) => {
                  const e = (v.evaluations ?? []).filter((x: any) => x.eval_name === n).pop();
                  if (!e) return <td key={n}>—</td>;
                  const metrics = (e.per_testing_criteria_results ?? []).flatMap((c: any) => Object.entries(c.metrics ?? {}).map(([k, x]) => `${k} ${num(x as number, 3)}`));
                  return (
                    <td key={n}>
                      {e.result_counts?.passed ?? 0}/{(e.result_counts?.passed ?? 0) + (e.result_counts?.failed ?? 0)} passed
                      {metrics.length ? <div class="muted">{metrics.join(", ")}</div> : null}
                    </td>
                  );
                })}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

function JobDetail({ id }: { id: string }) {
  const job = useLoad((signal) => get(`/admin/jobs/${enc(id)}`, signal), [id], 2000);
  const j = job.data;
  const active = !!j && ACTIVE.has(j.status);
  const { events, error } = useEvents(id, active || !j);
  const [run, busy, actionError, clear] = useAction();
  if (job.error) return <ErrorBox error={job.error} />;
  if (!j) return <p class="muted">Loading…</p>;
  const p = j.progress;
  return (
    <section class="card" aria-labelledby="job-title" data-job={j.id}>
      <header class="card-head">
        <h2 id="job-title">{j.id}</h2>
        <Badge state={j.status} />
        <a href="#/jobs">Back to the list</a>
      </header>
      <KeyValues
        rows={[
          ["kind", j.kind],
          ["owner key", j.owner_key_id],
          ["created", when(j.created_at)],
          ["started", when(j.started_at)],
          ["finished", when(j.finished_at)],
          ["duration", secs(j.duration_seconds)],
          ["attempts", j.attempts],
          ["runner", j.lease?.owner],
        ]}
      />
      {p.total > 0 && (
        <Progress
          value={p.done / p.total}
          label={`${p.done} of ${p.total}${p.failed ? `, ${p.failed} failed` : ""}${p.eta_seconds ? `, ${secs(p.eta_seconds)} left` : ""}`}
        />
      )}
      <ErrorBox error={actionError} onClose={clear} />
      {active && (
        <ConfirmButton label="Cancel the job" confirm="Cancel it?" disabled={busy} onConfirm={() => run(() => api("POST", `/admin/jobs/${enc(id)}/cancel`)).then(() => job.reload())} />
      )}
      {j.error && <ErrorBox error={new Error(j.error.message ?? JSON.stringify(j.error))} />}
      <LossCurves events={events} />
      <VersionEvaluations result={j.result} />
      <details>
        <summary>Input</summary>
        <Json value={j.input} />
      </details>
      {j.result && (
        <details open>
          <summary>Result</summary>
          <Json value={j.result} />
        </details>
      )}
      <h3>Events</h3>
      <ErrorBox error={error} />
      <ol class="events" aria-live="polite">
        {events.map((e) => (
          <li key={e.seq} class={`level-${e.level}`}>
            <time>{when(e.created_at)}</time> <span>{e.message}</span>
          </li>
        ))}
      </ol>
    </section>
  );
}

export function Jobs({ id }: { id: string | null }) {
  const [kind, setKind] = useState("");
  const [status, setStatus] = useState("");
  const [after, setAfter] = useState<(string | null)[]>([null]);
  const list = useLoad(
    (signal) => get(`/admin/jobs${query({ kind, status, after: after[after.length - 1], limit: 25 })}`, signal),
    [kind, status, after],
    id ? undefined : 3000,
  );
  if (id) return <Page title="Jobs"><JobDetail id={id} /></Page>;
  const jobs: any[] = list.data?.data ?? [];
  return (
    <Page title="Jobs">
      <div class="row filters">
        <label>
          Kind{" "}
          <select value={kind} onChange={(e) => (setKind((e.target as HTMLSelectElement).value), setAfter([null]))}>
            <option value="">any</option>
            <option value="batch">batch</option>
            <option value="eval_run">eval_run</option>
            <option value="fine_tune">fine_tune</option>
            <option value="quantize">quantize</option>
          </select>
        </label>
        <label>
          Status{" "}
          <select value={status} onChange={(e) => (setStatus((e.target as HTMLSelectElement).value), setAfter([null]))}>
            <option value="">any</option>
            <option value="queued">queued</option>
            <option value="in_progress,finalizing,cancelling">running</option>
            <option value="completed">completed</option>
            <option value="failed">failed</option>
            <option value="cancelled">cancelled</option>
            <option value="expired">expired</option>
          </select>
        </label>
      </div>
      <ErrorBox error={list.error} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th>job</th>
              <th>kind</th>
              <th>status</th>
              <th>progress</th>
              <th>created</th>
              <th>duration</th>
            </tr>
          </thead>
          <tbody>
            {jobs.map((j) => (
              <tr key={j.id}>
                <td>
                  <a href={`#/jobs/${enc(j.id)}`}>{j.id}</a>
                </td>
                <td>{j.kind}</td>
                <td>
                  <Badge state={j.status} />
                </td>
                <td>{j.progress.total ? `${j.progress.done}/${j.progress.total}` : "—"}</td>
                <td>{when(j.created_at)}</td>
                <td>{secs(j.duration_seconds)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {!list.loading && jobs.length === 0 && <p class="muted">No job.</p>}
      <nav class="row pager" aria-label="Pages">
        <button disabled={after.length <= 1} onClick={() => setAfter(after.slice(0, -1))}>
          Newer
        </button>
        <button disabled={!list.data?.has_more} onClick={() => setAfter([...after, list.data.last_id])}>
          Older
        </button>
      </nav>
    </Page>
  );
}
