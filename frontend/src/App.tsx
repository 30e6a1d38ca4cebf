import { useCallback, useState } from 'react';
import { ApiError, type ApiClient, type User } from './api';
import { ClockPanel } from './components/ClockPanel';
import { HistoryPanel } from './components/HistoryPanel';
import { LoadStatus } from './components/LoadStatus';
import { UserPicker } from './components/UserPicker';
import { clearSelectedUserId, loadSelectedUserId, saveSelectedUserId } from './storage';
import { useLoad } from './useLoad';

export interface AppProps {
  api: ApiClient;
}

export function App({ api }: AppProps) {
  // Id of the remembered user to restore; `null` once the user chose or switched.
  const [rememberedId, setRememberedId] = useState<number | null>(() => loadSelectedUserId());
  const [chosen, setChosen] = useState<User | null>(null);
  // Bumped after every clock in/out so the history refreshes.
  const [clockVersion, setClockVersion] = useState(0);

  const restore = useLoad(
    rememberedId === null ? null : String(rememberedId),
    async (signal): Promise<User | null> => {
      if (rememberedId === null) return null;
      try {
        return await api.getUser(rememberedId);
      } catch (error) {
        // The remembered user was deleted: forget it and let the user choose.
        if (!(error instanceof ApiError && error.isNotFound)) throw error;
        if (!signal.aborted) clearSelectedUserId();
        return null;
      }
    },
  );
  const user = chosen ?? restore.data;

  const selectUser = useCallback((selected: User) => {
    saveSelectedUserId(selected.id);
    setChosen(selected);
  }, []);

  const switchUser = useCallback(() => {
    clearSelectedUserId();
    setRememberedId(null);
    setChosen(null);
  }, []);

  const onClockChange = useCallback(() => setClockVersion((v) => v + 1), []);

  let main;
  if (user === null) {
    main = (
      <>
        <LoadStatus
          error={restore.error && `Could not load the remembered user: ${restore.error}`}
          loading={restore.loading}
          loadingText="Loading…"
          onRetry={restore.reload}
        />
        {!restore.loading && <UserPicker api={api} onSelect={selectUser} />}
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
