// Pure date, duration and hours helpers. All calendar dates are local time.

import type { DaySummary, Entry } from './api';

const pad2 = (n: number): string => String(n).padStart(2, '0');

function wholeSeconds(seconds: number): number {
  return Number.isFinite(seconds) && seconds > 0 ? Math.floor(seconds) : 0;
}

/** `5400` → `"1h 30m"`, `59` → `"0m"`, `36000` → `"10h 00m"`. */
export function formatDuration(seconds: number): string {
  const total = wholeSeconds(seconds);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  return hours > 0 ? `${hours}h ${pad2(minutes)}m` : `${minutes}m`;
}

/** Decimal hours with two decimals: `5400` → `"1.50"`. */
export function formatHours(seconds: number): string {
  return (wholeSeconds(seconds) / 3600).toFixed(2);
}

/** Local wall-clock time `HH:MM` (24h) of an ISO timestamp or Date; `""` if invalid. */
export function formatClockTime(value: string | Date): string {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return '';
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
}

/** Local calendar date of `date` as `YYYY-MM-DD`. */
export function toIsoDate(date: Date): string {
  return `${date.getFullYear()}-${pad2(date.getMonth() + 1)}-${pad2(date.getDate())}`;
}

/** Parses `YYYY-MM-DD` as local midnight. */
export function parseIsoDate(value: string): Date {
  const [y, m, d] = value.split('-').map(Number);
  return new Date(y, m - 1, d);
}

export function startOfDay(date: Date): Date {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate());
}

/** Calendar arithmetic (safe across DST changes). */
export function addDays(date: Date, days: number): Date {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate() + days);
}

/** The inclusive date range covering the last `days` days, ending today. */
export function lastDaysRange(days: number, today: Date): { from: string; to: string } {
  return { from: toIsoDate(addDays(today, -(days - 1))), to: toIsoDate(today) };
}

/** Every date of the range, oldest first, with the server's totals (0 where it sent none). */
export function fillDays(range: { from: string; to: string }, days: DaySummary[]): DaySummary[] {
  const byDate = new Map<string, number>();
  for (const day of days) byDate.set(day.date, (byDate.get(day.date) ?? 0) + day.worked_seconds);
  const result: DaySummary[] = [];
  const end = parseIsoDate(range.to);
  for (let d = parseIsoDate(range.from); d <= end; d = addDays(d, 1)) {
    const date = toIsoDate(d);
    result.push({ date, worked_seconds: byDate.get(date) ?? 0 });
  }
  return result;
}

export function totalSeconds(days: DaySummary[]): number {
  return days.reduce((sum, day) => sum + wholeSeconds(day.worked_seconds), 0);
}

/**
 * Seconds worked on the local calendar day containing `now`, counting open
 * entries up to `now` and clipping entries that cross midnight.
 */
export function workedSecondsToday(entries: Entry[], now: Date): number {
  const dayStart = startOfDay(now).getTime();
  const limit = Math.min(addDays(startOfDay(now), 1).getTime(), now.getTime());
  let totalMs = 0;
  for (const entry of entries) {
    const start = new Date(entry.clock_in).getTime();
    const end = entry.clock_out === null ? now.getTime() : new Date(entry.clock_out).getTime();
    if (Number.isNaN(start) || Number.isNaN(end)) continue;
    const from = Math.max(start, dayStart);
    const to = Math.min(end, limit);
    if (to > from) totalMs += to - from;
  }
  return Math.floor(totalMs / 1000);
}

const dayLabelFormat = new Intl.DateTimeFormat('en-GB', {
  weekday: 'short',
  day: 'numeric',
  month: 'short',
});

/** `"2024-01-15"` → `"Mon 15 Jan"`. */
export function formatDayLabel(isoDate: string): string {
  return dayLabelFormat.format(parseIsoDate(isoDate));
}
