import { vi } from 'vitest';
import type { ApiClient, Entry, User } from '../api';

/** An ApiClient whose methods are all mocks; each rejects unless a test sets it up. */
export function fakeApi() {
  const notMocked = (name: string) => () => Promise.reject(new Error(`${name} not mocked`));
  return {
    login: vi.fn<ApiClient['login']>(notMocked('login')),
    me: vi.fn<ApiClient['me']>(notMocked('me')),
    logout: vi.fn<ApiClient['logout']>(notMocked('logout')),
    changePassword: vi.fn<ApiClient['changePassword']>(notMocked('changePassword')),
    updateAccount: vi.fn<ApiClient['updateAccount']>(notMocked('updateAccount')),
    resetPassword: vi.fn<ApiClient['resetPassword']>(notMocked('resetPassword')),
    listTeams: vi.fn<ApiClient['listTeams']>(notMocked('listTeams')),
    createTeam: vi.fn<ApiClient['createTeam']>(notMocked('createTeam')),
    getTeamTotals: vi.fn<ApiClient['getTeamTotals']>(notMocked('getTeamTotals')),
    listUsers: vi.fn<ApiClient['listUsers']>(notMocked('listUsers')),
    createUser: vi.fn<ApiClient['createUser']>(notMocked('createUser')),
    getUser: vi.fn<ApiClient['getUser']>(notMocked('getUser')),
    clockIn: vi.fn<ApiClient['clockIn']>(notMocked('clockIn')),
    clockOut: vi.fn<ApiClient['clockOut']>(notMocked('clockOut')),
    getClockStatus: vi.fn<ApiClient['getClockStatus']>(notMocked('getClockStatus')),
    getHistory: vi.fn<ApiClient['getHistory']>(notMocked('getHistory')),
  } satisfies ApiClient;
}

export const ada: User = {
  id: 7,
  username: 'ada',
  email: 'ada@example.com',
  role: 'employee',
  team_id: 3,
  created_at: '2024-01-01T09:00:00Z',
};

export function makeEntry(id: number, clockIn: Date, clockOut: Date | null): Entry {
  return {
    id,
    user_id: ada.id,
    clock_in: clockIn.toISOString(),
    clock_out: clockOut ? clockOut.toISOString() : null,
    duration_seconds: clockOut ? Math.round((clockOut.getTime() - clockIn.getTime()) / 1000) : null,
  };
}
