import { useCallback, useEffect, useState } from 'react';
import { ApiError, errorMessage, type ApiClient, type User } from './api';
import { ClockPanel } from './components/ClockPanel';
import { ErrorMessage } from './components/ErrorMessage';
import { HistoryPanel } from './components/HistoryPanel';
import { UserPicker } from './components/UserPicker';
import { clearSelectedUserId, loadSelectedUserId, saveSelectedUserId } from './storage';

export interface AppProps {
  api: ApiClient;
}

export function App({ api }: AppProps) {
  const [user, setUser] = useState<User | null>(null);
  // Id of the remembered user while it is being loaded.
  const [restoringId, setRestoringId] = useState<number | null>(() => loadSelectedUserId());
  const [restoreError, setRestoreError] = useState<string | null>(null);
  // Bumped after every clock in/out so the history refreshes.
  const [clockVersion, setClockVersion] = useState(0);

  useEffect(() => {
    if (restoringId === null) return;
    let cancelled = false;
    api.getUser(restoringId).then(
      (found) => {
        if (cancelled) return;
        setUser(found);
        setRestoringId(null);
      },
      (error: unknown) => {
        if (cancelled) return;
        if (error instanceof ApiError && error.isNotFound) {
          clearSelectedUserId();
        } else {
          setRestoreError(`Could not load the remembered user: ${errorMessage(error)}`);
        }
        setRestoringId(null);
      },
    );
    return () => {
      cancelled = true;
    };
  }, [api, restoringId]);

  const selectUser = useCallback((selected: User) => {
    saveSelectedUserId(selected.id);
    setRestoreError(null);
    setUser(selected);
  }, []);

  const switchUser = useCallback(() => {
    clearSelectedUserId();
    setRestoreError(null);
    setUser(null);
  }, []);

  const retryRestore = useCallback(() => {
    setRestoreError(null);
    setRestoringId(loadSelectedUserId());
  }, []);

  const onClockChange = useCallback(() => setClockVersion((v) => v + 1), []);

  let main;
  if (restoringId !== null) {
    main = (
      <p className="muted" role="status">
        Loading…
      </p>
    );
  } else if (user === null) {
    main = (
      <>
        {restoreError && (
          <ErrorMessage message={restoreError}>
            <button type="button" className="link-button" onClick={retryRestore}>
              Retry
            </button>
          </ErrorMessage>
        )}
        <UserPicker api={api} onSelect={selectUser} />
      </>
    );
  } else {
    main = (
      <>
        <ClockPanel key={`clock-${user.id}`} api={api} user={user} onClockChange={onClockChange} />
        <HistoryPanel
          key={`history-${user.id}`}
          api={api}
          userId={user.id}
          refreshKey={clockVersion}
        />
      </>
    );
  }

  return (
    <div className="app">
      <header className="app-header">
        <h1>Time Manager</h1>
        {user && (
          <div className="current-user">
            <span>
              Signed in as <strong>{user.username}</strong>
            </span>
            <button type="button" className="secondary" onClick={switchUser}>
              Switch user
            </button>
          </div>
        )}
      </header>
      <main className="app-main">{main}</main>
    </div>
  );
}
