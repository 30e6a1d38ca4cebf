import { useState, type FormEvent } from 'react';
import { errorMessage, type ApiClient } from '../api';
import { ErrorMessage } from './ErrorMessage';
import { PasswordField } from './PasswordField';

/** Mirrors the backend's rule (backend/src/auth/password.rs); the backend decides. */
export const MIN_PASSWORD_CHARS = 12;

export interface ChangePasswordProps {
  api: ApiClient;
  /** Shown above the form, e.g. why the change is required. */
  intro?: string;
  onChanged: () => void;
  onCancel?: () => void;
}

/** Changing one's password; the server then ends every other session of the user. */
export function ChangePassword({ api, intro, onChanged, onCancel }: ChangePasswordProps) {
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [confirm, setConfirm] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function handleSubmit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    if ([...next].length < MIN_PASSWORD_CHARS) {
      setError(`The new password must be at least ${MIN_PASSWORD_CHARS} characters long.`);
      return;
    }
    if (next !== confirm) {
      setError('The two new passwords differ.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await api.changePassword(current, next);
      onChanged();
    } catch (failure) {
      setError(errorMessage(failure));
      setBusy(false);
    }
  }

  return (
    <section className="card" aria-labelledby="change-password-heading">
      <h2 id="change-password-heading">Change password</h2>
      {intro && <p className="muted">{intro}</p>}
      <form className="form" onSubmit={(event) => void handleSubmit(event)} noValidate>
        <PasswordField
          label="Current password"
          autoComplete="current-password"
          value={current}
          onChange={setCurrent}
        />
        <PasswordField
          label="New password"
          autoComplete="new-password"
          value={next}
          onChange={setNext}
        />
        <PasswordField
          label="New password again"
          autoComplete="new-password"
          value={confirm}
          onChange={setConfirm}
        />
        {error && <ErrorMessage message={error} />}
        <div className="actions">
          <button type="submit" disabled={busy} aria-busy={busy}>
            {busy ? 'Saving…' : 'Change password'}
          </button>
          {onCancel && (
            <button type="button" className="secondary" onClick={onCancel}>
              Cancel
            </button>
          )}
        </div>
      </form>
    </section>
  );
}
