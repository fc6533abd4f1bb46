// uPlot line charts that follow their container's width.
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563", "#65a30d", "#9333ea"];

/** Draw every point of a sparse series, and in a dense one the points with no neighbour (a
single sample between gaps), which a line alone would not show. */
function pointsToDraw(u: uPlot, seriesIdx: number): number[] | null {
  const ys = u.data[seriesIdx] as (number | null | undefined)[];
  const has = (i: number) => ys[i] !== null && ys[i] !== undefined;
  let count = 0;
  for (let i = 0; i < ys.length; i++) if (has(i)) count++;
  if (count <= 40) return null;
  const alone: number[] = [];
  for (let i = 0; i < ys.length; i++) if (has(i) && !has(i - 1) && !has(i + 1)) alone.push(i);
  return alone;
}

/** From zero (or below, for negative data) to a little above the highest value; 0..1 when flat. */
function yRange(_u: uPlot, min: number | null, max: number | null): uPlot.Range.MinMax {
  const lo = Math.min(0, min ?? 0);
  return [lo, max === null || max <= lo ? lo + 1 : max * 1.1];
}

function clockLabels(_u: uPlot, splits: number[], _axisIdx: number, _space: number, incr: number): string[] {
  const opts: Intl.DateTimeFormatOptions = { hour: "2-digit", minute: "2-digit", hour12: false };
  if (incr < 60) opts.second = "2-digit";
  return splits.map((t) => new Date(t * 1000).toLocaleTimeString([], opts));
}

export interface Line {
  label: string;
  color?: string;
  dash?: boolean;
}

export function LineChart({
  title,
  lines,
  data,
  format = (v: number) => String(v),
  time = true,
  height = 180,
  xLabel,
  spanGaps = false,
}: {
  title: string;
  lines: Line[];
  data: (number | null)[][]; // [xs, ...one array per line]
  format?: (v: number) => string;
  time?: boolean;
  height?: number;
  xLabel?: string;
  spanGaps?: boolean;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = lines.map((l) => l.label).join("\u0000") + (time ? "t" : "x");

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height,
      scales: { x: { time }, y: { range: yRange } },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      series: [
        { label: xLabel ?? (time ? "time" : "x") },
        ...lines.map((l, i) => ({
          label: l.label,
          stroke: l.color ?? PALETTE[i % PALETTE.length],
          width: 1.5,
          dash: l.dash ? [5, 4] : undefined,
          spanGaps,
          points: { show: true, size: 5, filter: pointsToDraw },
          value: (_u: uPlot, v: number | null) => (v === null || v === undefined ? "—" : format(v)),
        })),
      ],
      axes: [
        // Times as the clock reads (seconds when the ticks are closer than a minute); steps
        // (not time) in whole numbers.
        time
          ? { stroke: "#6b7280", grid: { stroke: "#e5e7eb" }, values: clockLabels }
          : { stroke: "#6b7280", grid: { stroke: "#e5e7eb" }, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] },
        {
          stroke: "#6b7280",
          grid: { stroke: "#e5e7eb" },
          size: 60,
          values: (_u: uPlot, vals: number[]) => vals.map((v) => format(v)),
        },
      ],
    };
    const u = new uPlot(opts, data as uPlot.AlignedData, el);
    plot.current = u;
    const resize = new ResizeObserver(() => {
      const width = Math.max(200, el.clientWidth);
      if (Math.abs(width - u.width) > 2) u.setSize({ width, height });
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [shape, height]);

  useEffect(() => {
    plot.current?.setData(data as uPlot.AlignedData);
  }, [data]);

  const points = data.length > 1 ? data.slice(1).reduce((n, ys) => n + ys.filter((y) => y !== null).length, 0) : 0;
  return (
    <figure class="chart" data-chart={title} data-points={points}>
      <figcaption>{title}</figcaption>
      <div ref={box} class="chart-box" />
    </figure>
  );
}
