import { act, renderHook } from '@testing-library/react';
import { describe, expect, it, vi } from 'vitest';
import { ApiError } from './api';
import { useLoad } from './useLoad';

type Deferred<T> = ReturnType<typeof deferred<T>>;

/** A promise settled by the test, to control the order in which responses arrive. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A loader whose calls are recorded per key and settled by the test. */
function controlledLoader() {
  const calls: { key: string; signal: AbortSignal; response: Deferred<string> }[] = [];
  const load = (key: string) => (signal: AbortSignal) => {
    const response = deferred<string>();
    calls.push({ key, signal, response });
    return response.promise;
  };
  return { calls, load };
}

/** Settles a response inside `act` and lets the hook's promise callbacks run. */
async function arrive(settle: () => void) {
  await act(async () => {
    settle();
    await Promise.resolve();
  });
}

type Loader = (key: string) => (signal: AbortSignal) => Promise<string>;

function renderLoad(initialKey: string | null, load: Loader) {
  return renderHook(({ key }: { key: string | null }) => useLoad(key, load(key ?? '')), {
    initialProps: { key: initialKey },
  });
}

describe('useLoad', () => {
  it('is loading, then has the data', async () => {
    const { calls, load } = controlledLoader();
    const { result } = renderLoad('a', load);

    expect(result.current).toMatchObject({ data: null, error: null, loading: true });
    await arrive(() => calls[0].response.resolve('A'));

    expect(result.current).toMatchObject({ data: 'A', error: null, loading: false });
    expect(calls).toHaveLength(1);
  });

  it('ignores a slow response for key A that arrives after key B', async () => {
    const { calls, load } = controlledLoader();
    const { result, rerender } = renderLoad('a', load);

    rerender({ key: 'b' });
    expect(calls.map((c) => c.key)).toEqual(['a', 'b']);
    expect(calls[0].signal.aborted).toBe(true);

    await arrive(() => calls[1].response.resolve('B'));
    expect(result.current).toMatchObject({ data: 'B', loading: false });

    await arrive(() => calls[0].response.resolve('A'));
    expect(result.current).toMatchObject({ data: 'B', error: null, loading: false });
  });

  it('ignores a response for key A that arrives while key B is still loading', async () => {
    const { calls, load } = controlledLoader();
    const { result, rerender } = renderLoad('a', load);

    rerender({ key: 'b' });
    await arrive(() => calls[0].response.resolve('A'));
    expect(result.current).toMatchObject({ data: null, loading: true });

    await arrive(() => calls[1].response.reject(new ApiError(500, 'B failed')));
    expect(result.current).toMatchObject({ data: null, error: 'B failed', loading: false });
  });

  it("never shows an earlier key's error for the current key", async () => {
    const { calls, load } = controlledLoader();
    const { result, rerender } = renderLoad('a', load);

    await arrive(() => calls[0].response.reject(new ApiError(404, 'A not found')));
    expect(result.current.error).toBe('A not found');

    rerender({ key: 'b' });
    expect(result.current).toMatchObject({ error: null, loading: true });
    await arrive(() => calls[1].response.resolve('B'));
    expect(result.current).toMatchObject({ data: 'B', error: null, loading: false });
  });

  it('keeps the previous data while a new key loads', async () => {
    const { calls, load } = controlledLoader();
    const { result, rerender } = renderLoad('a', load);
    await arrive(() => calls[0].response.resolve('A'));

    rerender({ key: 'b' });

    expect(result.current).toMatchObject({ data: 'A', loading: true });
  });

  it('retries after an error with reload, and drops the old error at once', async () => {
    const { calls, load } = controlledLoader();
    const { result } = renderLoad('a', load);
    await arrive(() => calls[0].response.reject(new ApiError(0, 'Could not reach the server.')));
    expect(result.current).toMatchObject({ error: 'Could not reach the server.', loading: false });

    act(() => result.current.reload());

    expect(result.current).toMatchObject({ error: null, loading: true });
    expect(calls.map((c) => c.key)).toEqual(['a', 'a']);
    await arrive(() => calls[1].response.resolve('A'));
    expect(result.current).toMatchObject({ data: 'A', error: null, loading: false });
  });

  it('lets a reload win over the request it replaces', async () => {
    const { calls, load } = controlledLoader();
    const { result } = renderLoad('a', load);

    act(() => result.current.reload());
    await arrive(() => calls[1].response.resolve('fresh'));
    await arrive(() => calls[0].response.resolve('stale'));

    expect(result.current).toMatchObject({ data: 'fresh', loading: false });
  });

  it('applies nothing after unmount and aborts the signal', async () => {
    const { calls, load } = controlledLoader();
    const errors = vi.spyOn(console, 'error');
    const { result, unmount } = renderLoad('a', load);

    unmount();
    await arrive(() => calls[0].response.resolve('A'));

    expect(calls[0].signal.aborted).toBe(true);
    expect(result.current).toMatchObject({ data: null, loading: true });
    expect(errors).not.toHaveBeenCalled();
  });

  it('loads nothing for a null key and forgets the data', async () => {
    const { calls, load } = controlledLoader();
    const { result, rerender } = renderLoad('a', load);
    await arrive(() => calls[0].response.resolve('A'));

    rerender({ key: null });

    expect(result.current).toMatchObject({ data: null, error: null, loading: false });
    expect(calls).toHaveLength(1);
  });

  it('reports a loader that throws synchronously as an error', async () => {
    const { result } = renderHook(() =>
      useLoad<string>('a', () => {
        throw new Error('no such thing');
      }),
    );

    await arrive(() => {});

    expect(result.current).toMatchObject({ data: null, error: 'no such thing', loading: false });
  });

  it('updates the data in place with mutate', async () => {
    const { calls, load } = controlledLoader();
    const { result } = renderLoad('a', load);
    await arrive(() => calls[0].response.resolve('A'));

    act(() => result.current.mutate((data) => `${data}+`));

    expect(result.current).toMatchObject({ data: 'A+', loading: false });
  });

  it('calls the latest loader without restarting when only the closure changes', async () => {
    const first = vi.fn(() => Promise.resolve('first'));
    const second = vi.fn(() => Promise.resolve('second'));
    const { result, rerender } = renderHook(({ fn }) => useLoad('a', fn), {
      initialProps: { fn: first },
    });
    await arrive(() => {});
    rerender({ fn: second });
    await arrive(() => {});
    expect(second).not.toHaveBeenCalled();

    act(() => result.current.reload());
    await arrive(() => {});

    expect(first).toHaveBeenCalledTimes(1);
    expect(second).toHaveBeenCalledTimes(1);
    expect(result.current.data).toBe('second');
  });
});
