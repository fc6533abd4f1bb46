import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, get, getKey, query, setKey } from "./api";
import { message } from "./components";
import { Deployments } from "./pages/deployments";
import { Jobs } from "./pages/jobs";
import { Keys } from "./pages/keys";
import { Models } from "./pages/models";
import { Overview } from "./pages/overview";
import { Playground } from "./pages/playground";
import { Requests } from "./pages/requests";
import "./style.css";

const PAGES = [
  ["overview", "Overview"],
  ["models", "Models"],
  ["deployments", "Deployments"],
  ["requests", "Requests"],
  ["jobs", "Jobs"],
  ["playground", "Playground"],
  ["keys", "Keys"],
] as const;

/** The route is the URL's fragment: #/page/rest (the server only serves /ui). */
function useRoute(): string[] {
  const parse = () => {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    return parts[0] ? parts : ["overview"];
  };
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

/** Checks the key on an admin read route before keeping it. */
async function checkKey(key: string): Promise<void> {
  setKey(key);
  try {
    await get(`/admin/metrics/history${query({ after: Date.now() / 1000 })}`);
  } catch (e) {
    setKey(null);
    if (e instanceof ApiError && e.status === 403) throw new Error("this key is not an admin key");
    if (e instanceof ApiError && e.status === 401) throw new Error("the server does not accept this key");
    throw e;
  }
}

function Login({ reason, onIn }: { reason: string | null; onIn: () => void }) {
  const [key, setValue] = useState("");
  const [error, setError] = useState<string | null>(reason);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await checkKey(key.trim());
      onIn();
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <form onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">lmaas console</h1>
        <label for="admin-key">Admin API key</label>
        <input
          id="admin-key"
          name="admin-key"
          type="password"
          autoComplete="off"
          autoFocus
          required
          value={key}
          onInput={(e) => setValue((e.target as HTMLInputElement).value)}
          placeholder="lmaas-…"
        />
        <p class="hint">
          An admin key (<code>lmaas keys create --scope admin</code>). On the server's own machine the local token in{" "}
          <code>~/.lmaas/admin.token</code> works too. The key stays in this tab only.
        </p>
        {error && (
          <div class="error" role="alert">
            {error}
          </div>
        )}
        <button type="submit" class="primary" disabled={busy || !key.trim()}>
          {busy ? "Checking…" : "Log in"}
        </button>
      </form>
    </main>
  );
}

function App() {
  const [loggedIn, setLoggedIn] = useState(() => getKey() !== null);
  const [reason, setReason] = useState<string | null>(null);
  const [menuOpen, setMenuOpen] = useState(false);
  const route = useRoute();
  useEffect(() => {
    const on = (e: Event) => {
      setKey(null);
      setReason(`Logged out: ${(e as CustomEvent).detail}`);
      setLoggedIn(false);
    };
    window.addEventListener("lmaas:unauthorized", on);
    return () => window.removeEventListener("lmaas:unauthorized", on);
  }, []);
  useEffect(() => setMenuOpen(false), [route.join("/")]);
  if (!loggedIn) return <Login reason={reason} onIn={() => setLoggedIn(true)} />;
  const [page, ...rest] = route;
  const logout = () => {
    setKey(null);
    setReason(null);
    setLoggedIn(false);
  };
  return (
    <div class="shell">
      <a class="skip" href="#main">
        Skip to content
      </a>
      <nav class={menuOpen ? "nav open" : "nav"} aria-label="Console">
        <div class="brand">
          <span>lmaas</span>
          <button class="menu" aria-expanded={menuOpen} aria-controls="nav-links" onClick={() => setMenuOpen(!menuOpen)}>
            Menu
          </button>
        </div>
        <ul id="nav-links">
          {PAGES.map(([id, label]) => (
            <li key={id}>
              <a href={`#/${id}`} aria-current={page === id ? "page" : undefined}>
                {label}
              </a>
            </li>
          ))}
        </ul>
        <button class="logout" onClick={logout}>
          Log out
        </button>
      </nav>
      <main id="main" tabIndex={-1}>
        {page === "overview" && <Overview />}
        {page === "models" && <Models name={rest[0] ?? null} />}
        {page === "deployments" && <Deployments />}
        {page === "requests" && <Requests id={rest[0] ?? null} />}
        {page === "jobs" && <Jobs id={rest[0] ?? null} />}
        {page === "playground" && <Playground />}
        {page === "keys" && <Keys />}
        {!PAGES.some(([id]) => id === page) && <p>No such page.</p>}
      </main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);
