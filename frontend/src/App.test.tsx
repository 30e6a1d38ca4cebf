import { fireEvent, render, screen } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { ApiError, type Me } from './api';
import { App } from './App';
import { ada, fakeApi } from './test/fakeApi';

const adaMe: Me = { user: ada, must_change_password: false, csrf_token: 'c5rf' };

function apiWithData() {
  const api = fakeApi();
  api.me.mockResolvedValue(null);
  api.getClockStatus.mockResolvedValue({ clocked_in: false, entry: null });
  api.getHistory.mockResolvedValue({ entries: [], days: [] });
  api.logout.mockResolvedValue(undefined);
  return api;
}

function fillSignIn(email: string, password: string) {
  fireEvent.change(screen.getByLabelText('Email'), { target: { value: email } });
  fireEvent.change(screen.getByLabelText('Password'), { target: { value: password } });
  fireEvent.click(screen.getByRole('button', { name: 'Sign in' }));
}

describe('App', () => {
  it('shows the sign-in page without a session, and no user picker', async () => {
    const api = apiWithData();
    api.login.mockRejectedValueOnce(new ApiError(401, 'wrong email or password'));
    api.login.mockResolvedValueOnce(adaMe);
    render(<App api={api} />);

    expect(await screen.findByRole('heading', { name: 'Sign in' })).toBeTruthy();
    expect(screen.queryByText(/Choose a user/)).toBeNull();
    fillSignIn(' ada@example.com ', 'wrong password!');
    expect((await screen.findByRole('alert')).textContent).toBe('wrong email or password');

    fillSignIn('ada@example.com', 'correct horse battery');
    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(api.login).toHaveBeenLastCalledWith('ada@example.com', 'correct horse battery');
    expect(screen.getByText('ada')).toBeTruthy();
  });

  it('restores the session from /auth/me and signs out', async () => {
    const api = apiWithData();
    api.me.mockResolvedValueOnce(adaMe);
    render(<App api={api} />);

    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(screen.queryByRole('button', { name: 'My team' })).toBeNull();
    expect(screen.queryByRole('button', { name: 'Admin' })).toBeNull();
    fireEvent.click(screen.getByRole('button', { name: 'Sign out' }));

    expect(await screen.findByRole('heading', { name: 'Sign in' })).toBeTruthy();
    expect(api.logout).toHaveBeenCalledTimes(1);
  });

  it('asks for a new password after a one-time password', async () => {
    const api = apiWithData();
    api.me.mockResolvedValueOnce({ ...adaMe, must_change_password: true });
    api.me.mockResolvedValueOnce(adaMe);
    api.changePassword.mockResolvedValue(undefined);
    render(<App api={api} />);

    expect(await screen.findByRole('heading', { name: 'Change password' })).toBeTruthy();
    expect(screen.queryByRole('button', { name: 'Clock in' })).toBeNull();
    fireEvent.change(screen.getByLabelText('Current password'), { target: { value: 'OneTime123456' } });
    fireEvent.change(screen.getByLabelText('New password'), { target: { value: 'short' } });
    fireEvent.change(screen.getByLabelText('New password again'), { target: { value: 'short' } });
    fireEvent.click(screen.getByRole('button', { name: 'Change password' }));
    expect((await screen.findByRole('alert')).textContent).toContain('at least 12');

    for (const label of ['New password', 'New password again']) {
      fireEvent.change(screen.getByLabelText(label), { target: { value: 'my own long passphrase' } });
    }
    fireEvent.click(screen.getByRole('button', { name: 'Change password' }));
    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(api.changePassword).toHaveBeenCalledWith('OneTime123456', 'my own long passphrase');
  });

  it("shows a manager the team's totals", async () => {
    const api = apiWithData();
    api.me.mockResolvedValueOnce({ ...adaMe, user: { ...ada, role: 'manager' } });
    api.getTeamTotals.mockResolvedValue({
      team: { id: 3, name: 'Night shift', created_at: '2024-01-01T00:00:00Z' },
      from: '2024-01-09',
      to: '2024-01-15',
      members: [
        { user_id: 8, username: 'grace', role: 'employee', clocked_in: true, worked_seconds: 5400 },
      ],
    });
    render(<App api={api} />);

    fireEvent.click(await screen.findByRole('button', { name: 'My team' }));
    expect(await screen.findByRole('heading', { name: 'Team Night shift' })).toBeTruthy();
    expect(screen.getByText('grace')).toBeTruthy();
    expect(screen.getByText('Clocked in')).toBeTruthy();
    expect(api.getTeamTotals.mock.calls[0][0]).toBe(3);
  });

  it('lets an admin create a user and shows the one-time password once', async () => {
    const api = apiWithData();
    api.me.mockResolvedValueOnce({ ...adaMe, user: { ...ada, role: 'admin', team_id: null } });
    api.listUsers.mockResolvedValue([ada]);
    api.listTeams.mockResolvedValue([{ id: 3, name: 'Night shift', created_at: '2024-01-01T00:00:00Z' }]);
    api.createUser.mockResolvedValue({
      user: { ...ada, id: 8, username: 'grace', email: 'grace@example.com' },
      initial_password: 'Xk4mQ7pR2sT9vW3yZ6bC8dF5',
    });
    render(<App api={api} />);

    fireEvent.click(await screen.findByRole('button', { name: 'Admin' }));
    expect(await screen.findByText('ada@example.com')).toBeTruthy();
    fireEvent.change(screen.getByLabelText('Username'), { target: { value: ' grace ' } });
    fireEvent.change(screen.getByLabelText('Email'), { target: { value: 'grace@example.com' } });
    fireEvent.change(screen.getByLabelText('Role'), { target: { value: 'manager' } });
    fireEvent.change(screen.getByLabelText('Team'), { target: { value: '3' } });
    fireEvent.click(screen.getByRole('button', { name: 'Create user' }));

    expect((await screen.findByTestId('one-time-password')).textContent).toBe('Xk4mQ7pR2sT9vW3yZ6bC8dF5');
    expect(api.createUser).toHaveBeenCalledWith({
      username: 'grace',
      email: 'grace@example.com',
      role: 'manager',
      team_id: 3,
    });
    fireEvent.click(screen.getByRole('button', { name: 'Done' }));
    expect(screen.queryByTestId('one-time-password')).toBeNull();
  });
});
