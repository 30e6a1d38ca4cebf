import { useId, useState, type FormEvent } from 'react';
import { errorMessage, type ApiClient, type CreatedUser, type Role } from '../api';
import { useLoad } from '../useLoad';
import { ErrorMessage } from './ErrorMessage';
import { LoadStatus } from './LoadStatus';

export interface AdminPanelProps {
  api: ApiClient;
}

const ROLES: Role[] = ['employee', 'manager', 'admin'];

/** An admin's page: users (create, one-time passwords) and teams. */
export function AdminPanel({ api }: AdminPanelProps) {
  const directory = useLoad('admin', async () => {
    const [users, teams] = await Promise.all([api.listUsers(), api.listTeams()]);
    return { users, teams };
  });
  const data = directory.data;
  // The one-time password just handed out: shown once, never stored.
  const [handedOut, setHandedOut] = useState<CreatedUser | null>(null);
  const [error, setError] = useState<string | null>(null);

  const [username, setUsername] = useState('');
  const [email, setEmail] = useState('');
  const [role, setRole] = useState<Role>('employee');
  const [teamId, setTeamId] = useState('');
  const [teamName, setTeamName] = useState('');
  const ids = { username: useId(), email: useId(), role: useId(), team: useId(), teamName: useId() };

  async function run(action: () => Promise<void>) {
    setError(null);
    try {
      await action();
      directory.reload();
    } catch (failure) {
      setError(errorMessage(failure));
    }
  }

  function createUser(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    void run(async () => {
      const created = await api.createUser({
        username: username.trim(),
        email: email.trim(),
        role,
        team_id: teamId === '' ? null : Number(teamId),
      });
      setHandedOut(created);
      setUsername('');
      setEmail('');
    });
  }

  function createTeam(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    void run(async () => {
      await api.createTeam(teamName.trim());
      setTeamName('');
    });
  }

  const teamName_ = (id: number | null) =>
    id === null ? '—' : (data?.teams.find((t) => t.id === id)?.name ?? `#${id}`);

  return (
    <div className="stack">
      {handedOut && (
        <section className="card one-time" aria-labelledby="one-time-heading">
          <h2 id="one-time-heading">One-time password for {handedOut.user.username}</h2>
          <p>
            <code data-testid="one-time-password">{handedOut.initial_password}</code>
          </p>
          <p className="muted">
            Give it to {handedOut.user.email} in person or over a channel you trust. It is shown
            only now; they must choose their own password when they first sign in.
          </p>
          <button type="button" className="secondary" onClick={() => setHandedOut(null)}>
            Done
          </button>
        </section>
      )}
      {error && <ErrorMessage message={error} />}
      <section className="card" aria-labelledby="users-heading">
        <h2 id="users-heading">Users</h2>
        <LoadStatus
          error={directory.error}
          loading={data === null}
          loadingText="Loading users…"
          onRetry={directory.reload}
        />
        {data && (
          <table className="team-table">
            <thead>
              <tr>
                <th scope="col">User</th>
                <th scope="col">Role</th>
                <th scope="col">Team</th>
                <th scope="col">Password</th>
              </tr>
            </thead>
            <tbody>
              {data.users.map((user) => (
                <tr key={user.id}>
                  <td>
                    {user.username} <span className="muted">{user.email}</span>
                  </td>
                  <td>{user.role}</td>
                  <td>{teamName_(user.team_id)}</td>
                  <td>
                    <button
                      type="button"
                      className="link-button"
                      onClick={() =>
                        void run(async () => setHandedOut(await api.resetPassword(user.id)))
                      }
                    >
                      New one-time password
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <h3>Create a user</h3>
        <form className="form" onSubmit={createUser} noValidate>
          <div className="field">
            <label htmlFor={ids.username}>Username</label>
            <input
              id={ids.username}
              required
              value={username}
              onChange={(event) => setUsername(event.target.value)}
            />
          </div>
          <div className="field">
            <label htmlFor={ids.email}>Email</label>
            <input
              id={ids.email}
              type="email"
              required
              value={email}
              onChange={(event) => setEmail(event.target.value)}
            />
          </div>
          <div className="field">
            <label htmlFor={ids.role}>Role</label>
            <select id={ids.role} value={role} onChange={(event) => setRole(event.target.value as Role)}>
              {ROLES.map((r) => (
                <option key={r} value={r}>
                  {r}
                </option>
              ))}
            </select>
          </div>
          <div className="field">
            <label htmlFor={ids.team}>Team</label>
            <select id={ids.team} value={teamId} onChange={(event) => setTeamId(event.target.value)}>
              <option value="">No team</option>
              {data?.teams.map((team) => (
                <option key={team.id} value={String(team.id)}>
                  {team.name}
                </option>
              ))}
            </select>
          </div>
          <div>
            <button type="submit">Create user</button>
          </div>
        </form>
      </section>
      <section className="card" aria-labelledby="teams-heading">
        <h2 id="teams-heading">Teams</h2>
        {data && data.teams.length === 0 && <p className="muted">No teams yet.</p>}
        {data && data.teams.length > 0 && (
          <ul>
            {data.teams.map((team) => (
              <li key={team.id}>{team.name}</li>
            ))}
          </ul>
        )}
        <form className="form" onSubmit={createTeam} noValidate>
          <div className="field">
            <label htmlFor={ids.teamName}>Team name</label>
            <input
              id={ids.teamName}
              required
              value={teamName}
              onChange={(event) => setTeamName(event.target.value)}
            />
          </div>
          <div>
            <button type="submit">Create team</button>
          </div>
        </form>
      </section>
    </div>
  );
}
