import { useEffect, useId, useState } from 'react';
import { errorMessage, type ApiClient, type DaySummary } from '../api';
import {
  fillDays,
  formatDayLabel,
  formatDuration,
  formatHours,
  lastDaysRange,
  totalSeconds,
} from '../format';
import { ErrorMessage } from './ErrorMessage';

export const HISTORY_PERIODS = [7, 30] as const;
export type HistoryPeriod = (typeof HISTORY_PERIODS)[number];

export interface HistoryPanelProps {
  api: ApiClient;
  userId: number;
  /** Changing this value reloads the history (e.g. after clocking in/out). */
  refreshKey?: number;
  /** Clock source; injectable for tests. */
  now?: () => Date;
}

interface Loaded {
  /** Which request this result belongs to, to tell fresh data from stale. */
  key: string;
  days: DaySummary[];
}

const systemNow = () => new Date();

export function HistoryPanel({ api, userId, refreshKey = 0, now = systemNow }: HistoryPanelProps) {
  const [period, setPeriod] = useState<HistoryPeriod>(7);
  const [loaded, setLoaded] = useState<Loaded | null>(null);
  const [error, setError] = useState<{ key: string; message: string } | null>(null);
  const [retries, setRetries] = useState(0);
  const groupName = useId();

  const requestKey = `${userId}:${period}:${refreshKey}:${retries}`;

  useEffect(() => {
    let cancelled = false;
    const range = lastDaysRange(period, now());
    api.getHistory(userId, range).then(
      (history) => {
        if (!cancelled) setLoaded({ key: requestKey, days: fillDays(range, history.days) });
      },
      (err: unknown) => {
        if (!cancelled) setError({ key: requestKey, message: errorMessage(err) });
      },
    );
    return () => {
      cancelled = true;
    };
  }, [api, userId, period, now, requestKey]);

  const currentError = error?.key === requestKey ? error.message : null;
  const loading = loaded?.key !== requestKey && currentError === null;
  // Keep showing the previous table while a refresh is under way.
  const days = loaded?.days ?? null;
  const total = days ? totalSeconds(days) : 0;
  const maxSeconds = days ? Math.max(...days.map((d) => d.worked_seconds), 1) : 1;

  return (
    <section className="card history" aria-labelledby="history-heading" aria-busy={loading}>
      <div className="history-header">
        <h2 id="history-heading">History</h2>
        <fieldset className="segmented">
          <legend className="visually-hidden">Period</legend>
          {HISTORY_PERIODS.map((p) => (
            <label key={p} className={p === period ? 'selected' : undefined}>
              <input
                type="radio"
                name={groupName}
                value={p}
                checked={p === period}
                onChange={() => setPeriod(p)}
              />
              Last {p} days
            </label>
          ))}
        </fieldset>
      </div>

      {currentError && (
        <ErrorMessage message={currentError}>
          <button type="button" className="link-button" onClick={() => setRetries((r) => r + 1)}>
            Retry
          </button>
        </ErrorMessage>
      )}
      {days === null && loading && (
        <p className="muted" role="status">
          Loading history…
        </p>
      )}
      {days !== null && (
        <table className="history-table">
          <caption className="visually-hidden">
            Hours worked per day, last {days.length} days
          </caption>
          <thead>
            <tr>
              <th scope="col">Date</th>
              <th scope="col" className="num">
                Worked
              </th>
              <th scope="col" className="num">
                Hours
              </th>
              <th scope="col" className="bar-col">
                <span className="visually-hidden">Chart</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {[...days].reverse().map((day) => (
              <tr key={day.date} className={day.worked_seconds === 0 ? 'idle' : undefined}>
                <th scope="row">
                  <time dateTime={day.date}>{formatDayLabel(day.date)}</time>
                </th>
                <td className="num">{formatDuration(day.worked_seconds)}</td>
                <td className="num">{formatHours(day.worked_seconds)}</td>
                <td className="bar-col" aria-hidden="true">
                  <span
                    className="bar"
                    style={{ width: `${(Math.max(day.worked_seconds, 0) / maxSeconds) * 100}%` }}
                  />
                </td>
              </tr>
            ))}
          </tbody>
          <tfoot>
            <tr>
              <th scope="row">Total</th>
              <td className="num">{formatDuration(total)}</td>
              <td className="num">{formatHours(total)}</td>
              <td className="bar-col" aria-hidden="true" />
            </tr>
          </tfoot>
        </table>
      )}
    </section>
  );
}
