// The JSON fixtures in `fixtures/api/` (repository root) are real response shapes:
// the backend's integration tests check that its responses have exactly their
// shape. Here each fixture goes through `createApiClient` and must come out with
// exactly the shape of the hand-written type the client returns for it, so a field
// renamed, added, removed or retyped on either side fails one of the two.

import { describe, expect, it, vi } from 'vitest';
import {
  ApiError,
  createApiClient,
  type ApiClient,
  type ClockStatus,
  type DaySummary,
  type Entry,
  type History,
  type Me,
  type CreatedUser,
  type MemberTotal,
  type Team,
  type TeamTotals,
  type User,
} from './api';
import { nullable, shapeMismatches, type AnyShape, type Shape } from './test/shape';

// Each `Shape<T>` literal must list exactly T's keys with T's types, or typecheck fails.
const user: Shape<User> = {
  id: 'number',
  username: 'string',
  email: 'string',
  role: 'string',
  team_id: nullable('number'),
  created_at: 'string',
};
const me: Shape<Me> = { user, must_change_password: 'boolean', csrf_token: 'string' };
const createdUser: Shape<CreatedUser> = { user, initial_password: 'string' };
const team: Shape<Team> = { id: 'number', name: 'string', created_at: 'string' };
const memberTotal: Shape<MemberTotal> = {
  user_id: 'number',
  username: 'string',
  role: 'string',
  clocked_in: 'boolean',
  worked_seconds: 'number',
};
const teamTotals: Shape<TeamTotals> = {
  team,
  from: 'string',
  to: 'string',
  members: [memberTotal],
};
const entry: Shape<Entry> = {
  id: 'number',
  user_id: 'number',
  clock_in: 'string',
  clock_out: nullable('string'),
  duration_seconds: nullable('number'),
};
const clockStatus: Shape<ClockStatus> = { clocked_in: 'boolean', entry: nullable(entry) };
const daySummary: Shape<DaySummary> = { date: 'string', worked_seconds: 'number' };
const history: Shape<History> = { entries: [entry], days: [daySummary] };

/** How the client reaches a fixture: the status the backend sends it with, and the call. */
interface Endpoint {
  status: number;
  call: (api: ApiClient) => Promise<unknown>;
  shape: AnyShape;
}

/**
 * Ties the result type the client declares for `call` to the shape it must have
 * (curried so that TypeScript takes `T` from the call alone).
 */
function endpoint<T>(status: number, call: (api: ApiClient) => Promise<T>) {
  return (shape: Shape<T>): Endpoint => ({ status, call, shape });
}

const ENDPOINTS: Record<string, Endpoint> = {
  'user.json': endpoint(200, (api) => api.getUser(7))(user),
  'user-created.json': endpoint(201, (api) =>
    api.createUser({ username: 'ada', email: 'a@b.co' }),
  )(createdUser),
  'me.json': endpoint(200, (api) => api.login('root@example.com', 'secret secret'))(me),
  'team.json': endpoint(201, (api) => api.createTeam('Night shift'))(team),
  'team-list.json': endpoint(200, (api) => api.listTeams())([team]),
  'team-totals.json': endpoint(200, (api) =>
    api.getTeamTotals(3, { from: '2024-01-01', to: '2024-01-07' }),
  )(teamTotals),
  'user-list.json': endpoint(200, (api) => api.listUsers())([user]),
  'clock-entry-open.json': endpoint(201, (api) => api.clockIn(7))(entry),
  'clock-entry-closed.json': endpoint(200, (api) => api.clockOut(7))(entry),
  'clock-status-in.json': endpoint(200, (api) => api.getClockStatus(7))(clockStatus),
  'clock-status-out.json': endpoint(200, (api) => api.getClockStatus(7))(clockStatus),
  'clock-history.json': endpoint(200, (api) =>
    api.getHistory(7, { from: '2024-01-14', to: '2024-01-15' }),
  )(history),
};

const ERROR_FIXTURE = 'error.json';

// Vite resolves the glob at build time, relative to this file.
const FIXTURES = Object.fromEntries(
  Object.entries(
    import.meta.glob<unknown>('../../fixtures/api/*.json', { eager: true, import: 'default' }),
  ).map(([path, json]) => [path.slice(path.lastIndexOf('/') + 1), json]),
);

function fixture(name: string): unknown {
  if (!(name in FIXTURES)) throw new Error(`no fixture ${name} in fixtures/api/`);
  return FIXTURES[name];
}

function clientAnswering(status: number, body: unknown) {
  const fetchFn = vi.fn(() =>
    Promise.resolve(
      new Response(JSON.stringify(body), {
        status,
        headers: { 'Content-Type': 'application/json' },
      }),
    ),
  );
  return createApiClient('/api', fetchFn);
}

describe('API fixtures shared with the backend tests', () => {
  it('are each checked here', () => {
    expect(Object.keys(FIXTURES).sort()).toEqual([...Object.keys(ENDPOINTS), ERROR_FIXTURE].sort());
  });

  it.each(Object.entries(ENDPOINTS))('%s has the shape of the type api.ts returns', async (name, e) => {
    const json = fixture(name);

    const result = await e.call(clientAnswering(e.status, json));

    expect(result).toEqual(json);
    expect(shapeMismatches(result, e.shape)).toEqual([]);
  });

  it(`${ERROR_FIXTURE} is read as the error message`, async () => {
    const json = fixture(ERROR_FIXTURE);
    expect(shapeMismatches(json, { error: 'string' })).toEqual([]);
    const { error: message } = json as { error: string };

    const failure: unknown = await clientAnswering(404, json)
      .getUser(42)
      .catch((error: unknown) => error);

    expect(failure).toBeInstanceOf(ApiError);
    expect((failure as ApiError).message).toBe(message);
    expect((failure as ApiError).status).toBe(404);
  });
});
