import { fireEvent, render, screen } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { ApiError } from './api';
import { App } from './App';
import { SELECTED_USER_KEY } from './storage';
import { ada, fakeApi } from './test/fakeApi';

function apiWithData() {
  const api = fakeApi();
  api.listUsers.mockResolvedValue([ada]);
  api.getClockStatus.mockResolvedValue({ clocked_in: false, entry: null });
  api.getHistory.mockResolvedValue({ entries: [], days: [] });
  return api;
}

describe('App', () => {
  it('selects a user from the list and remembers it', async () => {
    const api = apiWithData();
    render(<App api={api} />);

    fireEvent.click(await screen.findByRole('button', { name: /ada/ }));

    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(localStorage.getItem(SELECTED_USER_KEY)).toBe('7');
  });

  it('restores the remembered user', async () => {
    localStorage.setItem(SELECTED_USER_KEY, '7');
    const api = apiWithData();
    api.getUser.mockResolvedValue(ada);
    render(<App api={api} />);

    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(api.getUser).toHaveBeenCalledWith(7);
    expect(api.listUsers).not.toHaveBeenCalled();

    fireEvent.click(screen.getByRole('button', { name: 'Switch user' }));
    expect(await screen.findByRole('heading', { name: 'Choose a user' })).toBeTruthy();
    expect(localStorage.getItem(SELECTED_USER_KEY)).toBeNull();
  });

  it('forgets a remembered user that no longer exists', async () => {
    localStorage.setItem(SELECTED_USER_KEY, '99');
    const api = apiWithData();
    api.getUser.mockRejectedValue(new ApiError(404, 'user not found'));
    render(<App api={api} />);

    expect(await screen.findByRole('heading', { name: 'Choose a user' })).toBeTruthy();
    expect(localStorage.getItem(SELECTED_USER_KEY)).toBeNull();
  });

  it('offers a retry when the remembered user cannot be loaded', async () => {
    localStorage.setItem(SELECTED_USER_KEY, '7');
    const api = apiWithData();
    api.getUser.mockRejectedValueOnce(new ApiError(0, 'Could not reach the server.'));
    api.getUser.mockResolvedValueOnce(ada);
    render(<App api={api} />);

    expect((await screen.findByRole('alert')).textContent).toContain(
      'Could not load the remembered user: Could not reach the server.',
    );
    expect(screen.getByRole('heading', { name: 'Choose a user' })).toBeTruthy();
    fireEvent.click(screen.getByRole('button', { name: 'Retry' }));

    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(api.getUser).toHaveBeenCalledTimes(2);
    expect(localStorage.getItem(SELECTED_USER_KEY)).toBe('7');
  });

  it('creates a user, or shows why it could not', async () => {
    const api = apiWithData();
    api.listUsers.mockResolvedValue([]);
    api.createUser.mockRejectedValueOnce(new ApiError(409, 'username already exists'));
    api.createUser.mockResolvedValueOnce({ ...ada, id: 8, username: 'grace' });
    render(<App api={api} />);

    expect(await screen.findByText('No users yet. Create one below.')).toBeTruthy();
    fireEvent.change(screen.getByLabelText('Username'), { target: { value: ' grace ' } });
    fireEvent.change(screen.getByLabelText('Email'), { target: { value: 'grace@example.com' } });
    fireEvent.click(screen.getByRole('button', { name: 'Create and continue' }));

    expect((await screen.findByRole('alert')).textContent).toBe('username already exists');
    expect(api.createUser).toHaveBeenCalledWith({ username: 'grace', email: 'grace@example.com' });

    fireEvent.click(screen.getByRole('button', { name: 'Create and continue' }));
    expect(await screen.findByText('grace')).toBeTruthy();
    expect(localStorage.getItem(SELECTED_USER_KEY)).toBe('8');
  });
});
