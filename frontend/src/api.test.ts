import { describe, expect, it, vi } from 'vitest';
import {
  ApiError,
  buildUrl,
  configuredBaseUrl,
  createApiClient,
  errorMessage,
  extractErrorMessage,
  type Entry,
  type Me,
  type User,
} from './api';

const user: User = {
  id: 7,
  username: 'ada',
  email: 'ada@example.com',
  role: 'employee',
  team_id: null,
  created_at: '2024-01-01T09:00:00Z',
};
const me: Me = { user, must_change_password: false, csrf_token: 'c5rf' };
const openEntry: Entry = {
  id: 3,
  user_id: 7,
  clock_in: '2024-01-15T08:00:00Z',
  clock_out: null,
  duration_seconds: null,
};

function jsonResponse(status: number, body: unknown, statusText = ''): Response {
  return new Response(JSON.stringify(body), {
    status,
    statusText,
    headers: { 'Content-Type': 'application/json' },
  });
}

function mockFetch(...responses: Response[]) {
  const fn = vi.fn<(input: string, init?: RequestInit) => Promise<Response>>();
  for (const r of responses) fn.mockResolvedValueOnce(r);
  return fn;
}

async function catchError(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(ApiError);
    return error as ApiError;
  }
  throw new Error('expected the promise to reject');
}

describe('buildUrl', () => {
  it('joins base and path with exactly one slash', () => {
    expect(buildUrl('/api', '/users')).toBe('/api/users');
    expect(buildUrl('/api/', '/users')).toBe('/api/users');
    expect(buildUrl('https://tm.example.com/api//', 'users')).toBe('https://tm.example.com/api/users');
    expect(buildUrl('', '/users')).toBe('/users');
  });

  it('appends an encoded query string', () => {
    expect(buildUrl('/api', '/x', { from: '2024-01-01', to: 'a b&c' })).toBe(
      '/api/x?from=2024-01-01&to=a+b%26c',
    );
  });
});

describe('configuredBaseUrl', () => {
  it('defaults to /api', () => {
    vi.stubEnv('VITE_API_BASE_URL', '');
    expect(configuredBaseUrl()).toBe('/api');
  });

  it('uses VITE_API_BASE_URL when set', () => {
    vi.stubEnv('VITE_API_BASE_URL', 'https://tm.example.com/api');
    expect(configuredBaseUrl()).toBe('https://tm.example.com/api');
  });
});

describe('extractErrorMessage', () => {
  it('reads the backend {"error": ...} body', () => {
    expect(extractErrorMessage('{"error":"email is invalid"}', 'fallback')).toBe('email is invalid');
  });

  it('falls back for empty, non-error JSON and HTML bodies', () => {
    expect(extractErrorMessage('', 'fallback')).toBe('fallback');
    expect(extractErrorMessage('{"message":"x"}', 'fallback')).toBe('fallback');
    expect(extractErrorMessage('{"error":""}', 'fallback')).toBe('fallback');
    expect(extractErrorMessage('<html><body>502</body></html>', 'fallback')).toBe('fallback');
  });

  it('accepts short plain text', () => {
    expect(extractErrorMessage('Bad Gateway', 'fallback')).toBe('Bad Gateway');
  });
});

describe('createApiClient', () => {
  it('builds URLs from the base and sends JSON headers', async () => {
    const fetchFn = mockFetch(jsonResponse(200, [user]));
    const api = createApiClient('https://tm.example.com/api/', fetchFn);

    await expect(api.listUsers()).resolves.toEqual([user]);

    expect(fetchFn).toHaveBeenCalledTimes(1);
    const [url, init] = fetchFn.mock.calls[0];
    expect(url).toBe('https://tm.example.com/api/users');
    expect(init?.method).toBe('GET');
    expect(init?.headers).toMatchObject({ Accept: 'application/json' });
    expect(init?.body).toBeUndefined();
  });

  it('uses the global fetch and the /api default base', async () => {
    vi.stubEnv('VITE_API_BASE_URL', '');
    const fetchFn = mockFetch(jsonResponse(200, user));
    vi.stubGlobal('fetch', fetchFn);

    await expect(createApiClient().getUser(7)).resolves.toEqual(user);
    expect(fetchFn.mock.calls[0][0]).toBe('/api/users/7');
  });

  it('POSTs a new user as JSON', async () => {
    const created = { user, initial_password: 'one-time-password' };
    const fetchFn = mockFetch(jsonResponse(201, created));
    const api = createApiClient('/api', fetchFn);

    await expect(api.createUser({ username: 'ada', email: 'ada@example.com' })).resolves.toEqual(
      created,
    );

    const [url, init] = fetchFn.mock.calls[0];
    expect(url).toBe('/api/users');
    expect(init?.method).toBe('POST');
    expect(init?.headers).toMatchObject({ 'Content-Type': 'application/json' });
    expect(JSON.parse(init?.body as string)).toEqual({ username: 'ada', email: 'ada@example.com' });
  });

  it('signs in, then sends the session CSRF token on every change, and signs out', async () => {
    const fetchFn = mockFetch(
      jsonResponse(200, me),
      jsonResponse(201, openEntry),
      new Response(null, { status: 204 }),
    );
    const api = createApiClient('/api', fetchFn);

    await expect(api.login('ada@example.com', 'secret secret')).resolves.toEqual(me);
    await api.clockIn(7);
    await api.logout();

    const [loginUrl, loginInit] = fetchFn.mock.calls[0];
    expect(loginUrl).toBe('/api/auth/login');
    expect(JSON.parse(loginInit?.body as string)).toEqual({
      email: 'ada@example.com',
      password: 'secret secret',
    });
    expect(loginInit?.headers).not.toHaveProperty('X-CSRF-Token');
    expect(fetchFn.mock.calls[1][1]?.headers).toMatchObject({ 'X-CSRF-Token': 'c5rf' });
    expect(fetchFn.mock.calls[1][1]?.credentials).toBe('same-origin');
    expect(fetchFn.mock.calls[2][0]).toBe('/api/auth/logout');
    expect(fetchFn.mock.calls[2][1]?.headers).toMatchObject({ 'X-CSRF-Token': 'c5rf' });
  });

  it('reads no session as null from /auth/me', async () => {
    const api = createApiClient('/api', mockFetch(jsonResponse(401, { error: 'sign-in required' })));
    await expect(api.me()).resolves.toBeNull();
  });

  it('calls the clock endpoints', async () => {
    const closed = { ...openEntry, clock_out: '2024-01-15T12:00:00Z', duration_seconds: 14400 };
    const fetchFn = mockFetch(
      jsonResponse(201, openEntry),
      jsonResponse(200, closed),
      jsonResponse(200, { clocked_in: false, entry: null }),
      jsonResponse(200, { entries: [closed], days: [{ date: '2024-01-15', worked_seconds: 14400 }] }),
    );
    const api = createApiClient('/api', fetchFn);

    await expect(api.clockIn(7)).resolves.toEqual(openEntry);
    await expect(api.clockOut(7)).resolves.toEqual(closed);
    await expect(api.getClockStatus(7)).resolves.toEqual({ clocked_in: false, entry: null });
    const history = await api.getHistory(7, { from: '2024-01-09', to: '2024-01-15' });
    expect(history.days).toEqual([{ date: '2024-01-15', worked_seconds: 14400 }]);

    expect(fetchFn.mock.calls.map(([url, init]) => `${init?.method} ${url}`)).toEqual([
      'POST /api/users/7/clock/in',
      'POST /api/users/7/clock/out',
      'GET /api/users/7/clock/status',
      'GET /api/users/7/clock/history?from=2024-01-09&to=2024-01-15',
    ]);
  });

  it('surfaces the backend error message with the status', async () => {
    const api = createApiClient('/api', mockFetch(jsonResponse(400, { error: 'email is invalid' })));

    const error = await catchError(api.createUser({ username: 'ada', email: 'nope' }));
    expect(error.status).toBe(400);
    expect(error.message).toBe('email is invalid');
    expect(error.isConflict).toBe(false);
    expect(errorMessage(error)).toBe('email is invalid');
  });

  it('reports 409 conflicts with the server message', async () => {
    const api = createApiClient(
      '/api',
      mockFetch(
        jsonResponse(409, { error: 'username already taken' }),
        jsonResponse(409, { error: 'already clocked in' }),
      ),
    );

    const duplicate = await catchError(api.createUser({ username: 'ada', email: 'a@b.c' }));
    expect(duplicate.isConflict).toBe(true);
    expect(duplicate.message).toBe('username already taken');

    const again = await catchError(api.clockIn(7));
    expect(again.status).toBe(409);
    expect(again.message).toBe('already clocked in');
  });

  it('explains a 409 without a body', async () => {
    const api = createApiClient(
      '/api',
      mockFetch(
        new Response(null, { status: 409 }),
        new Response(null, { status: 409 }),
        new Response(null, { status: 409 }),
      ),
    );

    expect((await catchError(api.clockIn(7))).message).toBe('You are already clocked in.');
    expect((await catchError(api.clockOut(7))).message).toBe('You are not clocked in.');
    expect((await catchError(api.createUser({ username: 'a', email: 'a@b.c' }))).message).toBe(
      'A user with that username or email already exists.',
    );
  });

  it('falls back to the HTTP status for unexpected bodies', async () => {
    const api = createApiClient(
      '/api',
      mockFetch(new Response('<html>oops</html>', { status: 500, statusText: 'Internal Server Error' })),
    );

    const error = await catchError(api.listUsers());
    expect(error.status).toBe(500);
    expect(error.message).toBe('Request failed (HTTP 500 Internal Server Error)');
  });

  it('reports 404 for a missing user', async () => {
    const api = createApiClient('/api', mockFetch(jsonResponse(404, { error: 'user not found' })));

    const error = await catchError(api.getUser(99));
    expect(error.isNotFound).toBe(true);
    expect(error.message).toBe('user not found');
  });

  it('turns network failures into status 0', async () => {
    const fetchFn = vi.fn<(input: string, init?: RequestInit) => Promise<Response>>();
    fetchFn.mockRejectedValueOnce(new TypeError('Failed to fetch'));
    const api = createApiClient('/api', fetchFn);

    const error = await catchError(api.listUsers());
    expect(error.status).toBe(0);
    expect(error.message).toMatch(/could not reach the server/i);
  });

  it('rejects a success response that is not JSON', async () => {
    const api = createApiClient('/api', mockFetch(new Response('<html></html>', { status: 200 })));

    const error = await catchError(api.listUsers());
    expect(error.message).toBe('The server sent an invalid response.');
  });
});
