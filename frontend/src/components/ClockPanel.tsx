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
}

const systemNow = () => new Date();

async function loadClockState(api: ApiClient, userId: number, now: Date): Promise<ClockState> {
  // Ask from yesterday so entries that started before local midnight (or that
  // the server files under another day because of time zones) are included.
  const range = { from: toIsoDate(addDays(now, -1)), to: toIsoDate(now) };
  const [status, history] = await Promise.all([
    api.getClockStatus(userId),
    api.getHistory(userId, range),
  ]);
  return { status, entries: history.entries };
}

/** Merges the open entry (from status) into the entry list, replacing any stale copy. */
function withOpenEntry(entries: Entry[], status: ClockStatus): Entry[] {
  const open = status.clocked_in ? status.entry : null;
  const others = entries.filter((e) => e.clock_out !== null && e.id !== open?.id);
  return open ? [...others, open] : others;
}

export function ClockPanel({ api, user, onClockChange, now = systemNow }: ClockPanelProps) {
  const [state, setState] = useState<ClockState | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [version, setVersion] = useState(0);
  const [currentTime, setCurrentTime] = useState(now);

  useEffect(() => {
    let cancelled = false;
    loadClockState(api, user.id, now()).then(
      (loaded) => {
        if (cancelled) return;
        setState(loaded);
        setLoadError(null);
        setCurrentTime(now());
      },
      (error: unknown) => {
        if (!cancelled) setLoadError(errorMessage(error));
      },
    );
    return () => {
      cancelled = true;
    };
  }, [api, user.id, version, now]);

  const clockedIn = state?.status.clocked_in ?? false;

  useEffect(() => {
    if (!clockedIn) return;
    const timer = setInterval(() => setCurrentTime(now()), TICK_MS);
    return () => clearInterval(timer);
  }, [clockedIn, now]);

  async function toggle() {
    if (!state) return;
    setBusy(true);
    setActionError(null);
    try {
      if (state.status.clocked_in) {
        const closed = await api.clockOut(user.id);
        setState((prev) =>
          prev && {
            status: { clocked_in: false, entry: null },
            entries: [...prev.entries.filter((e) => e.id !== closed.id), closed],
          },
        );
      } else {
        const opened = await api.clockIn(user.id);
        setState((prev) => {
          const status = { clocked_in: true, entry: opened };
          return prev && { status, entries: withOpenEntry(prev.entries, status) };
        });
      }
      setCurrentTime(now());
      onClockChange?.();
    } catch (error) {
      setActionError(errorMessage(error));
      // A conflict means our view is stale (e.g. changed in another tab): reload it.
      if (error instanceof ApiError && error.isConflict) setVersion((v) => v + 1);
    } finally {
      setBusy(false);
    }
  }

  const openEntry = state?.status.clocked_in ? state.status.entry : null;
  const worked = state ? workedSecondsToday(withOpenEntry(state.entries, state.status), currentTime) : 0;

  return (
    <section className="card clock" aria-labelledby="clock-heading">
      <h2 id="clock-heading">Today</h2>
      <LoadStatus
        error={loadError}
        loading={state === null}
        loadingText="Loading status…"
        onRetry={() => {
          setLoadError(null);
          setVersion((v) => v + 1);
        }}
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
