import { useId, useState } from 'react';
import type { ApiClient } from '../api';
import {
  fillDays,
  formatDayLabel,
  formatDuration,
  formatHours,
  lastDaysRange,
  totalSeconds,
} from '../format';
import { useLoad } from '../useLoad';
import { LoadStatus } from './LoadStatus';

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

const systemNow = () => new Date();

export function HistoryPanel({ api, userId, refreshKey = 0, now = systemNow }: HistoryPanelProps) {
  const [period, setPeriod] = useState<HistoryPeriod>(7);
  const groupName = useId();

  const history = useLoad(`${userId}:${period}:${refreshKey}`, async () => {
    const range = lastDaysRange(period, now());
    const { days } = await api.getHistory(userId, range);
    return fillDays(range, days);
  });
  // Keeps showing the previous table while a refresh is under way.
  const days = history.data;
  const total = days ? totalSeconds(days) : 0;
  const maxSeconds = days ? Math.max(...days.map((d) => d.worked_seconds), 1) : 1;

  return (
    <section className="card history" aria-labelledby="history-heading" aria-busy={history.loading}>
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

      <LoadStatus
        error={history.error}
        loading={days === null}
        loadingText="Loading history…"
        onRetry={history.reload}
      />
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
