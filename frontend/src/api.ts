// Typed client for the Time Manager backend API.
//
// The response types below are written by hand after `backend/src/users.rs`,
// `clock.rs`, `teams.rs`, `auth.rs` and `error.rs`. `fixtures/api/` (repository root) holds one JSON file
// per response shape: the backend's tests check real responses against it, and
// `api.fixtures.test.ts` checks it against these types.

export type Role = 'employee' | 'manager' | 'admin';

export interface User {
  id: number;
  username: string;
  email: string;
  role: Role;
  team_id: number | null;
  created_at: string;
}

/** The signed-in user (`GET /auth/me`, `POST /auth/login`). */
export interface Me {
  user: User;
  must_change_password: boolean;
  /** Sent back in `X-CSRF-Token` on every state-changing request. */
  csrf_token: string;
}

/** A user an admin created (or reset): the one-time password is shown only this once. */
export interface CreatedUser {
  user: User;
  initial_password: string;
}

export interface Team {
  id: number;
  name: string;
  created_at: string;
}

export interface MemberTotal {
  user_id: number;
  username: string;
  role: Role;
  clocked_in: boolean;
  worked_seconds: number;
}

export interface TeamTotals {
  team: Team;
  from: string;
  to: string;
  members: MemberTotal[];
}

export interface Entry {
  id: number;
  user_id: number;
  clock_in: string;
  clock_out: string | null;
  duration_seconds: number | null;
}

export interface ClockStatus {
  clocked_in: boolean;
  entry: Entry | null;
}

export interface DaySummary {
  /** Calendar date, `YYYY-MM-DD`. */
  date: string;
  worked_seconds: number;
}

export interface History {
  entries: Entry[];
  days: DaySummary[];
}

export interface NewUser {
  username: string;
  email: string;
  role?: Role;
  team_id?: number | null;
}

export interface HistoryRange {
  /** Inclusive start date, `YYYY-MM-DD`. */
  from: string;
  /** Inclusive end date, `YYYY-MM-DD`. */
  to: string;
}

export interface ApiClient {
  login(email: string, password: string): Promise<Me>;
  /** The signed-in user, or `null` without a session. */
  me(): Promise<Me | null>;
  logout(): Promise<void>;
  changePassword(currentPassword: string, newPassword: string): Promise<void>;
  listUsers(): Promise<User[]>;
  createUser(user: NewUser): Promise<CreatedUser>;
  updateAccount(id: number, role: Role, teamId: number | null): Promise<User>;
  resetPassword(id: number): Promise<CreatedUser>;
  listTeams(): Promise<Team[]>;
  createTeam(name: string): Promise<Team>;
  getTeamTotals(teamId: number, range: HistoryRange): Promise<TeamTotals>;
  getUser(id: number): Promise<User>;
  clockIn(userId: number): Promise<Entry>;
  clockOut(userId: number): Promise<Entry>;
  getClockStatus(userId: number): Promise<ClockStatus>;
  getHistory(userId: number, range: HistoryRange): Promise<History>;
}

/** An API call that failed. `status` is 0 when the server could not be reached. */
export class ApiError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }

  get isConflict(): boolean {
    return this.status === 409;
  }

  get isNotFound(): boolean {
    return this.status === 404;
  }

  get isUnauthorized(): boolean {
    return this.status === 401;
  }
}

export const DEFAULT_API_BASE_URL = '/api';

/** The API base URL baked in at build time (`VITE_API_BASE_URL`), default `/api`. */
export function configuredBaseUrl(): string {
  const fromEnv = import.meta.env.VITE_API_BASE_URL;
  return fromEnv && fromEnv.trim() !== '' ? fromEnv.trim() : DEFAULT_API_BASE_URL;
}

/** Joins a base URL and an absolute API path without doubling or dropping slashes. */
export function buildUrl(
  baseUrl: string,
  path: string,
  query?: Record<string, string>,
): string {
  const base = baseUrl.replace(/\/+$/, '');
  const suffix = path.startsWith('/') ? path : `/${path}`;
  const params = query ? new URLSearchParams(query).toString() : '';
  return `${base}${suffix}${params ? `?${params}` : ''}`;
}

const MAX_TEXT_MESSAGE_LENGTH = 200;

/**
 * Extracts a human-readable message from a failed response body.
 * The backend sends `{"error": "message"}`; anything else falls back to
 * short plain text, then to `fallback`.
 */
export function extractErrorMessage(body: string, fallback: string): string {
  const text = body.trim();
  if (text === '') return fallback;
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object' && 'error' in parsed) {
      const { error } = parsed;
      if (typeof error === 'string' && error.trim() !== '') return error.trim();
    }
    return fallback;
  } catch {
    // Not JSON: accept short plain text, but not an HTML error page.
    if (text.length <= MAX_TEXT_MESSAGE_LENGTH && !text.startsWith('<')) return text;
    return fallback;
  }
}

function defaultMessage(status: number, statusText: string): string {
  const reason = statusText ? ` ${statusText}` : '';
  return `Request failed (HTTP ${status}${reason})`;
}

type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

interface RequestOptions {
  method?: 'GET' | 'POST' | 'PUT';
  body?: unknown;
  query?: Record<string, string>;
  /** Messages for specific statuses when the server sends none. */
  fallbacks?: Partial<Record<number, string>>;
}

export function createApiClient(
  baseUrl: string = configuredBaseUrl(),
  fetchFn: FetchLike = (input, init) => globalThis.fetch(input, init),
): ApiClient {
  // The session's CSRF token, learnt from the sign-in or `/auth/me` answer. The session
  // itself is an HttpOnly cookie this code never sees.
  let csrfToken: string | null = null;
  const remember = (me: Me): Me => {
    csrfToken = me.csrf_token;
    return me;
  };

  async function request<T>(path: string, options: RequestOptions = {}): Promise<T> {
    const { method = 'GET', body, query, fallbacks = {} } = options;
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (method !== 'GET' && csrfToken !== null) headers['X-CSRF-Token'] = csrfToken;
    const init: RequestInit = { method, headers, credentials: 'same-origin' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }

    let response: Response;
    try {
      response = await fetchFn(buildUrl(baseUrl, path, query), init);
    } catch {
      throw new ApiError(0, 'Could not reach the server. Check your connection and try again.');
    }

    const text = await response.text().catch(() => '');
    if (response.status === 204) return undefined as T;
    if (!response.ok) {
      const fallback =
        fallbacks[response.status] ?? defaultMessage(response.status, response.statusText);
      throw new ApiError(response.status, extractErrorMessage(text, fallback));
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(response.status, 'The server sent an invalid response.');
    }
  }

  const userPath = (id: number) => `/users/${encodeURIComponent(String(id))}`;

  return {
    login: async (email, password) =>
      remember(
        await request<Me>('/auth/login', {
          method: 'POST',
          body: { email, password },
          fallbacks: { 401: 'Wrong email or password.', 429: 'Too many attempts. Wait a while.' },
        }),
      ),
    me: async () => {
      try {
        return remember(await request<Me>('/auth/me'));
      } catch (error) {
        if (error instanceof ApiError && error.isUnauthorized) {
          csrfToken = null;
          return null;
        }
        throw error;
      }
    },
    logout: async () => {
      await request<void>('/auth/logout', { method: 'POST' });
      csrfToken = null;
    },
    changePassword: (currentPassword, newPassword) =>
      request<void>('/auth/password', {
        method: 'POST',
        body: { current_password: currentPassword, new_password: newPassword },
      }),
    listUsers: () => request<User[]>('/users'),
    createUser: (user) =>
      request<CreatedUser>('/users', {
        method: 'POST',
        body: user,
        fallbacks: { 409: 'A user with that username or email already exists.' },
      }),
    updateAccount: (id, role, teamId) =>
      request<User>(`${userPath(id)}/account`, {
        method: 'PUT',
        body: { role, team_id: teamId },
      }),
    resetPassword: (id) => request<CreatedUser>(`${userPath(id)}/password`, { method: 'POST' }),
    listTeams: () => request<Team[]>('/teams'),
    createTeam: (name) =>
      request<Team>('/teams', {
        method: 'POST',
        body: { name },
        fallbacks: { 409: 'A team with that name exists.' },
      }),
    getTeamTotals: (teamId, range) =>
      request<TeamTotals>(`/teams/${encodeURIComponent(String(teamId))}/totals`, {
        query: { from: range.from, to: range.to },
      }),
    getUser: (id) => request<User>(userPath(id), { fallbacks: { 404: 'User not found.' } }),
    clockIn: (userId) =>
      request<Entry>(`${userPath(userId)}/clock/in`, {
        method: 'POST',
        fallbacks: { 409: 'You are already clocked in.' },
      }),
    clockOut: (userId) =>
      request<Entry>(`${userPath(userId)}/clock/out`, {
        method: 'POST',
        fallbacks: { 409: 'You are not clocked in.' },
      }),
    getClockStatus: (userId) => request<ClockStatus>(`${userPath(userId)}/clock/status`),
    getHistory: (userId, range) =>
      request<History>(`${userPath(userId)}/clock/history`, {
        query: { from: range.from, to: range.to },
      }),
  };
}

/** Returns the message to show for any error thrown by the client (or anything else). */
export function errorMessage(error: unknown): string {
  if (error instanceof Error && error.message) return error.message;
  return 'Something went wrong.';
}
