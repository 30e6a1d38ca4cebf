import type { ApiClient } from '../api';
import { formatDuration, lastDaysRange } from '../format';
import { useLoad } from '../useLoad';
import { LoadStatus } from './LoadStatus';

/** Days the team view covers, today included. */
export const TEAM_DAYS = 7;

export interface TeamPanelProps {
  api: ApiClient;
  teamId: number;
  /** Clock source; injectable for tests. */
  now?: () => Date;
}

/** A manager's view: each member's worked time over the last days. */
export function TeamPanel({ api, teamId, now = () => new Date() }: TeamPanelProps) {
  const totals = useLoad(`team-${teamId}`, () =>
    api.getTeamTotals(teamId, lastDaysRange(TEAM_DAYS, now())),
  );
  const data = totals.data;
  return (
    <section className="card" aria-labelledby="team-heading">
      <h2 id="team-heading">{data ? `Team ${data.team.name}` : 'Team'}</h2>
      <LoadStatus
        error={totals.error}
        loading={data === null}
        loadingText="Loading the team…"
        onRetry={totals.reload}
      />
      {data && (
        <table className="team-table">
          <caption className="muted">
            Worked from {data.from} to {data.to}
          </caption>
          <thead>
            <tr>
              <th scope="col">Member</th>
              <th scope="col">Now</th>
              <th scope="col" className="num">
                Worked
              </th>
            </tr>
          </thead>
          <tbody>
            {data.members.map((member) => (
              <tr key={member.user_id}>
                <td>
                  {member.username}
                  {member.role === 'manager' && <span className="muted"> (manager)</span>}
                </td>
                <td>{member.clocked_in ? 'Clocked in' : 'Out'}</td>
                <td className="num">{formatDuration(member.worked_seconds)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
