// Line plots as plain SVG text (no plotting dependency): x/y axes with ticks, one polyline and
// marker per series, a legend. Enough for the curves of bench/FLEET.md.

export interface Series {
  name: string;
  points: [number, number][];
}

export interface Plot {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logY?: boolean;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"];
const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function niceTicks(min: number, max: number, count = 5): number[] {
  if (max <= min) max = min + 1;
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  // the last tick is at or above max, so that every point lies inside the axes
  const top = Math.ceil(max / step - 1e-9) * step;
  for (let v = Math.floor(min / step) * step; v <= top + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

const fmt = (v: number) => (Math.abs(v) >= 1000 ? `${+(v / 1000).toPrecision(3)}k` : `${+v.toPrecision(3)}`);

export function linePlot(p: Plot): string {
  const W = 640, H = 400, L = 70, R = 180, T = 40, B = 50;
  const pts = p.series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  const xs = pts.map(([x]) => x), ys = pts.map(([, y]) => y);
  const xTicks = niceTicks(0, Math.max(1, ...xs));
  const logY = !!p.logY && ys.every((y) => y > 0);
  const yMin = logY ? 10 ** Math.floor(Math.log10(Math.min(...ys))) : 0;
  const yMax = logY ? 10 ** Math.ceil(Math.log10(Math.max(...ys))) : Math.max(...ys, 1e-9) * 1.05;
  const yTicks = logY ? Array.from({ length: Math.round(Math.log10(yMax / yMin)) + 1 }, (_, i) => yMin * 10 ** i) : niceTicks(0, yMax);
  const xMax = xTicks.at(-1)!, yTop = logY ? yMax : yTicks.at(-1)!;
  const sx = (x: number) => L + (x / xMax) * (W - L - R);
  const sy = (y: number) => (logY ? T + (1 - Math.log10(y / yMin) / Math.log10(yTop / yMin)) * (H - T - B) : T + (1 - y / yTop) * (H - T - B));
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${(L + W - R) / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${esc(p.title)}</text>`);
  for (const t of xTicks) {
    out.push(`<line x1="${sx(t)}" y1="${T}" x2="${sx(t)}" y2="${H - B}" stroke="#eee"/>`);
    out.push(`<text x="${sx(t)}" y="${H - B + 16}" text-anchor="middle">${fmt(t)}</text>`);
  }
  for (const t of yTicks) {
    out.push(`<line x1="${L}" y1="${sy(t)}" x2="${W - R}" y2="${sy(t)}" stroke="#eee"/>`);
    out.push(`<text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
  }
  out.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`);
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">${esc(p.xLabel)}</text>`);
  out.push(`<text transform="translate(16 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(p.yLabel)}${logY ? " (log)" : ""}</text>`);
  p.series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length]!;
    const good = s.points.filter(([, y]) => Number.isFinite(y) && (!logY || y > 0)).sort((a, b) => a[0] - b[0]);
    if (good.length > 1) out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${good.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ")}"/>`);
    for (const [x, y] of good) out.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3.5" fill="${c}"><title>${esc(s.name)}: ${x}, ${fmt(y)}</title></circle>`);
    const ly = T + 10 + i * 18;
    out.push(`<line x1="${W - R + 12}" y1="${ly}" x2="${W - R + 32}" y2="${ly}" stroke="${c}" stroke-width="2"/><text x="${W - R + 38}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
