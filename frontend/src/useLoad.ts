// One way to load data in a component: results are stamped with the request they
// answer, so a slow response for an earlier key never overwrites a newer one, and
// nothing is applied after unmount.

import { useCallback, useEffect, useEffectEvent, useState } from 'react';
import { errorMessage } from './api';

export interface Load<T> {
  /**
   * The latest data that arrived, kept while a newer key or a reload is under way
   * (so a table does not blank out on refresh); `null` before anything arrived and
   * whenever `key` is `null`.
   */
  data: T | null;
  /** Why the current request failed (`errorMessage` of what it threw), else `null`. */
  error: string | null;
  /** True while the current request has neither succeeded nor failed. */
  loading: boolean;
  /** Runs the current request again (Retry, or after the server state changed). */
  reload: () => void;
  /** Replaces the data in place, e.g. with what a successful action returned. */
  mutate: (update: (data: T) => T) => void;
}

/** Which request a result answers: the key and how many reloads preceded it. */
interface Request {
  key: string;
  attempt: number;
}

/** How a request ended: `error` is `null` when it succeeded. */
interface Outcome {
  request: Request;
  error: string | null;
}

const same = (a: Request, b: Request | null) =>
  b !== null && a.key === b.key && a.attempt === b.attempt;

/**
 * Loads `load()` for `key` and again whenever `key` changes or `reload` is called.
 *
 * `key` must name everything `load` reads that can change (ids, periods, refresh
 * counters); `load` itself may be a new closure on every render and is not a
 * dependency. A `null` key loads nothing. The signal passed to `load` is aborted
 * when its result is no longer wanted (key changed, reload, unmount); whatever it
 * resolves or rejects with afterwards is ignored, so `load` may have side effects
 * that check `signal.aborted` first.
 */
export function useLoad<T>(key: string | null, load: (signal: AbortSignal) => Promise<T>): Load<T> {
  const [attempt, setAttempt] = useState(0);
  // The data of the latest success (of any request; boxed, as `T` may include null),
  // and how the latest settled request ended, stamped so only the current one counts.
  const [latest, setLatest] = useState<{ data: T } | null>(null);
  const [settled, setSettled] = useState<Outcome | null>(null);

  const run = useEffectEvent((signal: AbortSignal) => load(signal));

  useEffect(() => {
    if (key === null) return;
    const request = { key, attempt };
    const controller = new AbortController();
    // Through a promise executor, so a loader that throws before returning its
    // promise fails like one that rejects.
    new Promise<T>((resolve) => resolve(run(controller.signal))).then(
      (data) => {
        if (controller.signal.aborted) return;
        setLatest({ data });
        setSettled({ request, error: null });
      },
      (error: unknown) => {
        if (controller.signal.aborted) return;
        setSettled({ request, error: errorMessage(error) });
      },
    );
    return () => controller.abort();
  }, [key, attempt]);

  const reload = useCallback(() => setAttempt((n) => n + 1), []);
  const mutate = useCallback(
    (update: (data: T) => T) =>
      setLatest((prev) => (prev === null ? prev : { data: update(prev.data) })),
    [],
  );

  if (key === null) return { data: null, error: null, loading: false, reload, mutate };
  const current = { key, attempt };
  const outcome = settled !== null && same(current, settled.request) ? settled : null;
  return {
    data: latest?.data ?? null,
    error: outcome?.error ?? null,
    loading: outcome === null,
    reload,
    mutate,
  };
}
