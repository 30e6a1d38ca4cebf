import { useId, useState, type FormEvent } from 'react';
import { errorMessage, type ApiClient, type User } from '../api';
import { useLoad } from '../useLoad';
import { ErrorMessage } from './ErrorMessage';
import { LoadStatus } from './LoadStatus';

export interface UserPickerProps {
  api: ApiClient;
  onSelect: (user: User) => void;
}

export function UserPicker({ api, onSelect }: UserPickerProps) {
  const list = useLoad('users', async () => {
    const users = await api.listUsers();
    return [...users].sort((a, b) => a.username.localeCompare(b.username));
  });
  const users = list.data;

  const [username, setUsername] = useState('');
  const [email, setEmail] = useState('');
  const [creating, setCreating] = useState(false);
  const [createError, setCreateError] = useState<string | null>(null);

  const usernameId = useId();
  const emailId = useId();

  async function handleCreate(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    const newUser = { username: username.trim(), email: email.trim() };
    if (!newUser.username || !newUser.email) {
      setCreateError('Please enter both a username and an email.');
      return;
    }
    setCreating(true);
    setCreateError(null);
    try {
      const created = await api.createUser(newUser);
      onSelect(created);
    } catch (error) {
      setCreateError(errorMessage(error));
      setCreating(false);
    }
  }

  return (
    <div className="stack">
      <section className="card" aria-labelledby="pick-user-heading">
        <h2 id="pick-user-heading">Choose a user</h2>
        <LoadStatus
          error={list.error}
          loading={users === null}
          loadingText="Loading users…"
          onRetry={list.reload}
        />
        {users !== null && users.length === 0 && (
          <p className="muted">No users yet. Create one below.</p>
        )}
        {users !== null && users.length > 0 && (
          <ul className="user-list">
            {users.map((u) => (
              <li key={u.id}>
                <button type="button" className="user-button" onClick={() => onSelect(u)}>
                  <span className="user-name">{u.username}</span>
                  <span className="user-email">{u.email}</span>
                </button>
              </li>
            ))}
          </ul>
        )}
      </section>

      <section className="card" aria-labelledby="create-user-heading">
        <h2 id="create-user-heading">Create a user</h2>
        <form className="form" onSubmit={(event) => void handleCreate(event)} noValidate>
          <div className="field">
            <label htmlFor={usernameId}>Username</label>
            <input
              id={usernameId}
              name="username"
              autoComplete="username"
              required
              value={username}
              onChange={(event) => setUsername(event.target.value)}
            />
          </div>
          <div className="field">
            <label htmlFor={emailId}>Email</label>
            <input
              id={emailId}
              name="email"
              type="email"
              autoComplete="email"
              required
              value={email}
              onChange={(event) => setEmail(event.target.value)}
            />
          </div>
          {createError && <ErrorMessage message={createError} />}
          <div>
            <button type="submit" disabled={creating} aria-busy={creating}>
              {creating ? 'Creating…' : 'Create and continue'}
            </button>
          </div>
        </form>
      </section>
    </div>
  );
}
