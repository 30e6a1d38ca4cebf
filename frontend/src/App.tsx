import { useCallback, useState } from 'react';
import type { ApiClient, Me } from './api';
import { AdminPanel } from './components/AdminPanel';
import { ChangePassword } from './components/ChangePassword';
import { ClockPanel } from './components/ClockPanel';
import { HistoryPanel } from './components/HistoryPanel';
import { LoadStatus } from './components/LoadStatus';
import { SignIn } from './components/SignIn';
import { TeamPanel } from './components/TeamPanel';
import { useLoad } from './useLoad';

export interface AppProps {
  api: ApiClient;
}

type View = 'time' | 'team' | 'admin' | 'password';

/**
 * The signed-in user comes from `/auth/me` (the session is an HttpOnly cookie); without
 * a session the sign-in page is all there is.
 */
export function App({ api }: AppProps) {
  // Bumped to ask /auth/me again (after sign-in, sign-out or a password change).
  const [sessionVersion, setSessionVersion] = useState(0);
  const session = useLoad(`me-${sessionVersion}`, () => api.me());
  const [signedIn, setSignedIn] = useState<Me | null>(null);
  const me = signedIn ?? session.data;
  const [view, setView] = useState<View>('time');
  // Bumped after every clock in/out so the history refreshes.
  const [clockVersion, setClockVersion] = useState(0);
  const onClockChange = useCallback(() => setClockVersion((v) => v + 1), []);

  const refresh = useCallback(() => {
    setSignedIn(null);
    setView('time');
    setSessionVersion((v) => v + 1);
  }, []);

  const signOut = useCallback(async () => {
    try {
      await api.logout();
    } finally {
      refresh();
    }
  }, [api, refresh]);

  let main;
  if (me === null || me === undefined) {
    main = session.loading ? (
      <LoadStatus error={null} loading loadingText="Loading…" onRetry={session.reload} />
    ) : (
      <>
        <LoadStatus
          error={session.error}
          loading={false}
          loadingText=""
          onRetry={session.reload}
        />
        <SignIn api={api} onSignedIn={setSignedIn} />
      </>
    );
  } else if (me.must_change_password) {
    main = (
      <ChangePassword
        api={api}
        intro="You signed in with a one-time password. Choose your own to continue."
        onChanged={refresh}
      />
    );
  } else if (view === 'password') {
    main = <ChangePassword api={api} onChanged={refresh} onCancel={() => setView('time')} />;
  } else if (view === 'team' && me.user.team_id !== null) {
    main = <TeamPanel api={api} teamId={me.user.team_id} />;
  } else if (view === 'admin') {
    main = <AdminPanel api={api} />;
  } else {
    main = (
      <>
        <ClockPanel api={api} user={me.user} onClockChange={onClockChange} />
        <HistoryPanel api={api} userId={me.user.id} refreshKey={clockVersion} />
      </>
    );
  }

  const tabs: { view: View; label: string; shown: boolean }[] = me
    ? [
        { view: 'time', label: 'My time', shown: true },
        {
          view: 'team',
          label: 'My team',
          shown: me.user.role === 'manager' && me.user.team_id !== null,
        },
        { view: 'admin', label: 'Admin', shown: me.user.role === 'admin' },
        { view: 'password', label: 'Change password', shown: true },
      ]
    : [];

  return (
    <div className="app">
      <header className="app-header">
        <h1>Time Manager</h1>
        {me && (
          <div className="current-user">
            <span>
              Signed in as <strong>{me.user.username}</strong> ({me.user.role})
            </span>
            <button type="button" className="secondary" onClick={() => void signOut()}>
              Sign out
            </button>
          </div>
        )}
      </header>
      {me && !me.must_change_password && (
        <nav className="tabs" aria-label="Pages">
          {tabs
            .filter((tab) => tab.shown)
            .map((tab) => (
              <button
                key={tab.view}
                type="button"
                className={view === tab.view ? 'tab active' : 'tab'}
                aria-current={view === tab.view ? 'page' : undefined}
                onClick={() => setView(tab.view)}
              >
                {tab.label}
              </button>
            ))}
        </nav>
      )}
      <main className="app-main">{main}</main>
    </div>
  );
}
