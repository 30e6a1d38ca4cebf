import { useEffect, useState } from 'react';
import {
  ApiError,
  errorMessage,
  type ApiClient,
  type ClockStatus,
  type Entry,
  type User,
} from '../api';
import {
  addDays,
  formatClockTime,
  formatDuration,
  toIsoDate,
  workedSecondsToday,
} from '../format';
import { useLoad } from '../useLoad';
import { ErrorMessage } from './ErrorMessage';
import { LoadStatus } from './LoadStatus';

/** How often the "worked today" figure is refreshed while clocked in. */
const TICK_MS = 30_000;

export interface ClockPanelProps {
  api: ApiClient;
  user: User;
  /** Called after a successful clock in or clock out. */
  onClockChange?: () => void;
  /** Clock source; injectable for tests. */
  now?: () => Date;
}

interface ClockState {
  status: ClockStatus;
  /** Entries of yesterday and today (local), to compute time worked today. */
  entries: Entry[];
  /** When this state was read or last changed. */
  at: Date;
}

const systemNow = () => new Date();

async function loadClockState(
  api: ApiClient,
  userId: number,
  now: () => Date,
): Promise<ClockState> {
  const today = now();
  // Ask from yesterday so entries that started before local midnight (or that
  // the server files under another day because of time zones) are included.
  const range = { from: toIsoDate(addDays(today, -1)), to: toIsoDate(today) };
  const [status, history] = await Promise.all([
    api.getClockStatus(userId),
    api.getHistory(userId, range),
  ]);
  return { status, entries: history.entries, at: now() };
}

/** Merges the open entry (from status) into the entry list, replacing any stale copy. */
function withOpenEntry(entries: Entry[], status: ClockStatus): Entry[] {
  const open = status.clocked_in ? status.entry : null;
  const others = entries.filter((e) => e.clock_out !== null && e.id !== open?.id);
  return open ? [...others, open] : others;
}

function later(a: Date, b: Date | null): Date {
  return b !== null && b > a ? b : a;
}

export function ClockPanel({ api, user, onClockChange, now = systemNow }: ClockPanelProps) {
  const clock = useLoad(String(user.id), () => loadClockState(api, user.id, now));
  const state = clock.data;
  const [actionError, setActionError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  // The last tick of the timer; the figure uses whichever is later, this or `state.at`.
  const [ticked, setTicked] = useState<Date | null>(null);

  const clockedIn = state?.status.clocked_in ?? false;

  useEffect(() => {
    if (!clockedIn) return;
    const timer = setInterval(() => setTicked(now()), TICK_MS);
    return () => clearInterval(timer);
  }, [clockedIn, now]);

  async function toggle() {
    if (!state) return;
    setBusy(true);
    setActionError(null);
    try {
      if (state.status.clocked_in) {
        const closed = await api.clockOut(user.id);
        const at = now();
        clock.mutate((prev) => ({
          status: { clocked_in: false, entry: null },
          entries: [...prev.entries.filter((e) => e.id !== closed.id), closed],
          at,
        }));
      } else {
        const opened = await api.clockIn(user.id);
        const status = { clocked_in: true, entry: opened };
        const at = now();
        clock.mutate((prev) => ({ status, entries: withOpenEntry(prev.entries, status), at }));
      }
      onClockChange?.();
    } catch (error) {
      setActionError(errorMessage(error));
      // A conflict means our view is stale (e.g. changed in another tab): reload it.
      if (error instanceof ApiError && error.isConflict) clock.reload();
    } finally {
      setBusy(false);
    }
  }

  const openEntry = state?.status.clocked_in ? state.status.entry : null;
  const worked = state
    ? workedSecondsToday(withOpenEntry(state.entries, state.status), later(state.at, ticked))
    : 0;

  return (
    <section className="card clock" aria-labelledby="clock-heading">
      <h2 id="clock-heading">Today</h2>
      <LoadStatus
        error={clock.error}
        loading={state === null}
        loadingText="Loading status…"
        onRetry={clock.reload}
      />
      {state !== null && (
        <>
          <div className="clock-status" role="status" aria-live="polite">
            <p className={clockedIn ? 'badge badge-in' : 'badge badge-out'}>
              {clockedIn
                ? openEntry
                  ? `Clocked in since ${formatClockTime(openEntry.clock_in)}`
                  : 'Clocked in'
                : 'Not clocked in'}
            </p>
            <p className="worked">
              Worked today: <strong>{formatDuration(worked)}</strong>
            </p>
          </div>
          {actionError && <ErrorMessage message={actionError} />}
          <button
            type="button"
            className={clockedIn ? 'clock-button clock-out' : 'clock-button clock-in'}
            onClick={() => void toggle()}
            disabled={busy}
            aria-busy={busy}
          >
            {busy ? 'Please wait…' : clockedIn ? 'Clock out' : 'Clock in'}
          </button>
        </>
      )}
    </section>
  );
}
