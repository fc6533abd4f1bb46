// Request records: /admin/requests (filtered, paged by cursor) and /admin/requests/{id}.
import { useState } from "preact/hooks";
import { enc, get, query } from "../api";
import { Badge, ErrorBox, Json, KeyValues, Page, useLoad } from "../components";
import { ms, when } from "../format";

interface Filters {
  model: string;
  status: string;
  key: string;
  since: string;
  until: string;
}
const EMPTY: Filters = { model: "", status: "", key: "", since: "", until: "" };
const PAGE = 25;

/** A datetime-local value (the browser's time zone) as ISO 8601 with its offset. */
function iso(local: string): string | null {
  if (!local) return null;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

function Record({ id }: { id: string }) {
  const rec = useLoad((signal) => get(`/admin/requests/${enc(id)}`, signal), [id]);
  if (rec.error) return <ErrorBox error={rec.error} />;
  const r = rec.data;
  if (!r) return <p class="muted">Loading…</p>;
  return (
    <section class="card" aria-labelledby="record-title" data-record={r.id}>
      <header class="card-head">
        <h2 id="record-title">Request {r.request_id}</h2>
        <a href="#/requests">Back to the list</a>
      </header>
      <KeyValues
        rows={[
          ["record id", r.id],
          ["received", when(r.received_at)],
          ["endpoint", r.endpoint],
          ["model", r.model ? `${r.model}${r.version !== null ? ` v${r.version}` : ""}` : null],
          ["status", <>
            <Badge state={r.status} /> HTTP {r.http_status}
          </>],
          ["API key", r.api_key_id],
          ["client", r.client_ip],
          ["queue time", ms(r.queue_time_ms)],
          ["time to first token", ms(r.ttft_ms)],
          ["latency", ms(r.latency_ms)],
          ["prompt tokens", r.prompt_tokens],
          ["completion tokens", r.completion_tokens],
          ["error", r.error],
        ]}
      />
      <h3>Parameters</h3>
      <Json value={r.params} />
      {r.prompt && (
        <>
          <h3>Prompt</h3>
          <pre class="json">{r.prompt}</pre>
        </>
      )}
    </section>
  );
}

export function Requests({ id }: { id: string | null }) {
  const [draft, setDraft] = useState<Filters>(EMPTY);
  const [filters, setFilters] = useState<Filters>(EMPTY);
  // Cursors of the pages before this one (the first page has none).
  const [cursors, setCursors] = useState<(number | null)[]>([null]);
  const before = cursors[cursors.length - 1];
  const page = useLoad(
    (signal) =>
      get(
        `/admin/requests${query({
          model: filters.model,
          status: filters.status,
          key: filters.key,
          since: iso(filters.since),
          until: iso(filters.until),
          limit: PAGE,
          before,
        })}`,
        signal,
      ),
    [filters, before],
  );
  const models = useLoad((signal) => get("/v1/models", signal), []);
  if (id) return <Page title="Requests"><Record id={id} /></Page>;
  const field = (name: keyof Filters) => (e: Event) => setDraft({ ...draft, [name]: (e.target as HTMLInputElement).value });
  const rows: any[] = page.data?.data ?? [];
  return (
    <Page title="Requests">
      <form
        class="filters row"
        aria-label="Filters"
        onSubmit={(e) => {
          e.preventDefault();
          setFilters(draft);
          setCursors([null]);
        }}
      >
        <label>
          Model{" "}
          <input name="model" list="request-models" value={draft.model} onInput={field("model")} />
          <datalist id="request-models">
            {(models.data?.data ?? []).map((m: any) => (
              <option key={m.id} value={m.id} />
            ))}
          </datalist>
        </label>
        <label>
          Status{" "}
          <select name="status" value={draft.status} onChange={field("status")}>
            <option value="">any</option>
            <option value="ok">ok</option>
            <option value="error">error</option>
            <option value="cancelled">cancelled</option>
          </select>
        </label>
        <label>
          Key id <input name="key" value={draft.key} onInput={field("key")} size={14} />
        </label>
        <label>
          Since <input name="since" type="datetime-local" value={draft.since} onInput={field("since")} />
        </label>
        <label>
          Until <input name="until" type="datetime-local" value={draft.until} onInput={field("until")} />
        </label>
        <button type="submit" class="primary">
          Filter
        </button>
        <button
          type="button"
          onClick={() => {
            setDraft(EMPTY);
            setFilters(EMPTY);
            setCursors([null]);
          }}
        >
          Clear
        </button>
        <button type="button" onClick={page.reload}>
          Refresh
        </button>
      </form>
      <ErrorBox error={page.error} />
      <div class="table-wrap">
        <table class="requests clickable">
          <thead>
            <tr>
              <th>received</th>
              <th>request id</th>
              <th>endpoint</th>
              <th>model</th>
              <th>status</th>
              <th>key</th>
              <th>TTFT</th>
              <th>latency</th>
              <th>tokens in/out</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.id} data-request-id={r.request_id}>
                <td>{when(r.received_at)}</td>
                <td>
                  <a href={`#/requests/${r.id}`} title={r.request_id}>
                    {r.request_id.length > 18 ? `${r.request_id.slice(0, 16)}…` : r.request_id}
                  </a>
                </td>
                <td>{r.endpoint}</td>
                <td>{r.model ?? "—"}</td>
                <td>
                  <Badge state={r.status} /> {r.http_status}
                </td>
                <td>{r.api_key_id ?? "—"}</td>
                <td>{ms(r.ttft_ms)}</td>
                <td>{ms(r.latency_ms)}</td>
                <td>
                  {r.prompt_tokens}/{r.completion_tokens}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {!page.loading && rows.length === 0 && <p class="muted">No request matches.</p>}
      <nav class="row pager" aria-label="Pages">
        <button disabled={cursors.length <= 1} onClick={() => setCursors(cursors.slice(0, -1))}>
          Newer
        </button>
        <span class="muted">page {cursors.length}</span>
        <button disabled={!page.data?.next_cursor} onClick={() => setCursors([...cursors, page.data.next_cursor])}>
          Older
        </button>
      </nav>
    </Page>
  );
}
