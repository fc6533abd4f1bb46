// Live charts from GET /admin/metrics/history (an hour kept by the gateway, so a reload
// shows it again) and the replicas' states from GET /admin/deployments.
import { useEffect, useMemo, useState } from "preact/hooks";
import { ApiError, get, query } from "../api";
import { LineChart, type Line } from "../chart";
import { Badge, ErrorBox, Page, useLoad } from "../components";
import { num, pct, secs } from "../format";

interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
}
interface ModelSample {
  requests_per_s: Record<string, number>;
  prompt_tokens_per_s: number;
  generation_tokens_per_s: number;
  ttft: Percentiles | null;
  tpot: Percentiles | null;
  e2e: Percentiles | null;
  queue: Percentiles | null;
  running: number;
  waiting: number;
  replicas: Record<string, number>;
}
interface Sample {
  t: number;
  seconds: number;
  models: Record<string, ModelSample>;
}
interface History {
  interval_s: number;
  retention_s: number;
  samples: Sample[];
}

const ALL = "";

function useHistory(): { samples: Sample[]; error: unknown; interval: number } {
  const [samples, setSamples] = useState<Sample[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [interval, setIntervalS] = useState(5);
  useEffect(() => {
    let stop = false;
    let last: number | null = null;
    let kept: Sample[] = [];
    let timer: number | undefined;
    const poll = async () => {
      try {
        const h = await get<History>(`/admin/metrics/history${query({ after: last })}`);
        if (stop) return;
        setIntervalS(h.interval_s);
        if (h.samples.length) {
          last = h.samples[h.samples.length - 1].t;
          const horizon = last - h.retention_s;
          kept = kept.concat(h.samples).filter((s) => s.t >= horizon);
          setSamples(kept);
        }
        setError(null);
        timer = window.setTimeout(poll, Math.max(1, h.interval_s) * 1000);
      } catch (e) {
        if (stop) return;
        setError(e);
        if (!(e instanceof ApiError && e.status === 401)) timer = window.setTimeout(poll, 5000);
      }
    };
    poll();
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, []);
  return { samples, error, interval };
}

function pick(s: Sample, model: string): ModelSample[] {
  if (model === ALL) return Object.values(s.models);
  const m = s.models[model];
  return m ? [m] : [];
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

function build(samples: Sample[], model: string, models: string[]) {
  const xs = samples.map((s) => s.t);
  const statuses = new Set<string>();
  for (const s of samples) for (const m of pick(s, model)) for (const k of Object.keys(m.requests_per_s)) statuses.add(k);
  const codes = [...statuses].sort();
  const requests = codes.map((c) => samples.map((s) => sum(pick(s, model).map((m) => m.requests_per_s[c] ?? 0))));
  const prompt = samples.map((s) => sum(pick(s, model).map((m) => m.prompt_tokens_per_s)));
  const generated = samples.map((s) => sum(pick(s, model).map((m) => m.generation_tokens_per_s)));
  const running = samples.map((s) => sum(pick(s, model).map((m) => m.running)));
  const waiting = samples.map((s) => sum(pick(s, model).map((m) => m.waiting)));
  const errorRate = samples.map((s) => {
    const all = pick(s, model).flatMap((m) => Object.entries(m.requests_per_s));
    const total = sum(all.map(([, r]) => r));
    if (total <= 0) return null;
    return (100 * sum(all.filter(([c]) => !c.startsWith("2")).map(([, r]) => r))) / total;
  });
  const latency = (key: "ttft" | "tpot" | "e2e"): { lines: Line[]; data: (number | null)[][] } => {
    if (model !== ALL) {
      const qs: (keyof Percentiles)[] = ["p50", "p90", "p99"];
      return {
        lines: qs.map((q) => ({ label: q })),
        data: qs.map((q) => samples.map((s) => s.models[model]?.[key]?.[q] ?? null)),
      };
    }
    return {
      lines: models.map((m) => ({ label: `${m} p90` })),
      data: models.map((m) => samples.map((s) => s.models[m]?.[key]?.p90 ?? null)),
    };
  };
  return { xs, codes, requests, prompt, generated, running, waiting, errorRate, ttft: latency("ttft"), tpot: latency("tpot"), e2e: latency("e2e") };
}

const TILE_WINDOW_S = 30;

/** The latest figures: rates averaged over the last 30 s (a single sample is often empty at
 * low traffic), gauges as they stand, TTFT from the latest sample that had one. */
function Tiles({ samples, model }: { samples: Sample[]; model: string }) {
  const last = samples[samples.length - 1];
  if (!last) return null;
  const recent = samples.filter((s) => s.t > last.t - TILE_WINDOW_S);
  const seconds = sum(recent.map((s) => s.seconds));
  const per = (f: (m: ModelSample) => number) => (seconds > 0 ? sum(recent.map((s) => s.seconds * sum(pick(s, model).map(f)))) / seconds : 0);
  const rps = per((m) => sum(Object.values(m.requests_per_s)));
  const bad = per((m) => sum(Object.entries(m.requests_per_s).filter(([c]) => !c.startsWith("2")).map(([, r]) => r)));
  const ms = pick(last, model);
  const ttft = model !== ALL ? ([...recent].reverse().find((s) => s.models[model]?.ttft)?.models[model]?.ttft?.p50 ?? null) : null;
  const tiles: [string, string][] = [
    ["requests/s (30 s)", num(rps)],
    ["output tokens/s (30 s)", num(per((m) => m.generation_tokens_per_s), 1)],
    ["running", String(sum(ms.map((m) => m.running)))],
    ["waiting", String(sum(ms.map((m) => m.waiting)))],
    ["error rate (30 s)", rps > 0 ? pct(bad / rps) : "—"],
  ];
  if (model !== ALL) tiles.push(["TTFT p50 (latest)", secs(ttft)]);
  return (
    <div class="tiles" aria-label="Latest figures">
      {tiles.map(([k, v]) => (
        <div class="tile" key={k}>
          <div class="tile-value">{v}</div>
          <div class="tile-label">{k}</div>
        </div>
      ))}
    </div>
  );
}

function Replicas() {
  const deps = useLoad((signal) => get("/admin/deployments", signal), [], 5000);
  if (deps.error) return <ErrorBox error={deps.error} />;
  const list: any[] = deps.data?.data ?? [];
  return (
    <section class="card" aria-labelledby="replicas-title">
      <h2 id="replicas-title">Replicas</h2>
      {list.length === 0 && <p class="muted">{deps.loading ? "Loading…" : "Nothing is deployed."}</p>}
      <ul class="replica-list">
        {list.map((d) => (
          <li key={d.name}>
            <a href="#/deployments">{d.name}</a> <Badge state={d.state} />{" "}
            <span class="muted">
              {d.ready_replicas}/{d.replicas} ready
            </span>
            <span class="chips">
              {d.replica_status.map((r: any) => (
                <span key={r.id} class={`chip state-${r.state}`} title={`${r.node}${r.last_error ? ": " + r.last_error : ""}`}>
                  #{r.index} {r.state}
                </span>
              ))}
            </span>
          </li>
        ))}
      </ul>
    </section>
  );
}

export function Overview() {
  const { samples, error, interval } = useHistory();
  const [model, setModel] = useState(ALL);
  const models = useMemo(() => {
    const names = new Set<string>();
    for (const s of samples) for (const m of Object.keys(s.models)) names.add(m);
    return [...names].sort();
  }, [samples]);
  const c = useMemo(() => build(samples, model, models), [samples, model, models]);
  const span = samples.length ? (samples[samples.length - 1].t - samples[0].t) / 60 : 0;
  return (
    <Page
      title="Overview"
      actions={
        <label class="inline">
          Model{" "}
          <select value={model} onChange={(e) => setModel((e.target as HTMLSelectElement).value)}>
            <option value={ALL}>All models</option>
            {models.map((m) => (
              <option key={m} value={m}>
                {m}
              </option>
            ))}
          </select>
        </label>
      }
    >
      <ErrorBox error={error} />
      <p class="muted">
        A sample every {num(interval, 1)} s, {samples.length} kept ({num(span, 0)} min). Rates and percentiles cover the requests that ended within each
        sample.
      </p>
      <Tiles samples={samples} model={model} />
      <div class="charts">
        <LineChart title="Requests/s by status" lines={c.codes.map((code) => ({ label: code }))} data={[c.xs, ...c.requests]} format={(v) => num(v)} />
        <LineChart
          title="Tokens/s"
          lines={[{ label: "output" }, { label: "prompt", dash: true }]}
          data={[c.xs, c.generated, c.prompt]}
          format={(v) => num(v, 1)}
        />
        <LineChart title="Time to first token" lines={c.ttft.lines} data={[c.xs, ...c.ttft.data]} format={secs} />
        <LineChart title="Time per output token" lines={c.tpot.lines} data={[c.xs, ...c.tpot.data]} format={secs} />
        <LineChart title="End-to-end latency" lines={c.e2e.lines} data={[c.xs, ...c.e2e.data]} format={secs} />
        <LineChart
          title="Sequences: running and waiting"
          lines={[{ label: "running" }, { label: "waiting" }]}
          data={[c.xs, c.running, c.waiting]}
          format={(v) => num(v, 1)}
        />
        <LineChart title="Error rate (non-2xx, %)" lines={[{ label: "errors", color: "#dc2626" }]} data={[c.xs, c.errorRate]} format={(v) => `${num(v, 1)}%`} />
      </div>
      <Replicas />
    </Page>
  );
}
