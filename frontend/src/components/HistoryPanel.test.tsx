import { act, fireEvent, render, screen, within } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { ApiError, type History } from '../api';
import { fakeApi } from '../test/fakeApi';
import { HistoryPanel } from './HistoryPanel';

const now = () => new Date(2024, 0, 15, 10, 0);

describe('HistoryPanel', () => {
  it('lists worked hours per day for the last 7 days with a total', async () => {
    const api = fakeApi();
    api.getHistory.mockResolvedValue({
      entries: [],
      days: [
        { date: '2024-01-15', worked_seconds: 2 * 3600 },
        { date: '2024-01-12', worked_seconds: 7.5 * 3600 },
      ],
    });
    render(<HistoryPanel api={api} userId={7} now={now} />);

    const table = await screen.findByRole('table');
    expect(api.getHistory).toHaveBeenCalledWith(7, { from: '2024-01-09', to: '2024-01-15' });
    const rows = within(table).getAllByRole('row');
    // header + 7 days + total
    expect(rows).toHaveLength(9);
    expect(rows[1].textContent).toContain('Mon 15 Jan');
    expect(rows[1].textContent).toContain('2.00');
    expect(rows[4].textContent).toContain('Fri 12 Jan');
    expect(rows[4].textContent).toContain('7h 30m');
    expect(rows[8].textContent).toBe('Total9h 30m9.50');
  });

  it('switches to the last 30 days', async () => {
    const api = fakeApi();
    api.getHistory.mockResolvedValue({ entries: [], days: [] });
    render(<HistoryPanel api={api} userId={7} now={now} />);
    await screen.findByRole('table');

    fireEvent.click(screen.getByRole('radio', { name: 'Last 30 days' }));

    expect(await screen.findByText('Hours worked per day, last 30 days')).toBeTruthy();
    expect(api.getHistory).toHaveBeenLastCalledWith(7, { from: '2023-12-17', to: '2024-01-15' });
  });

  it('shows the error message with a retry', async () => {
    const api = fakeApi();
    api.getHistory.mockRejectedValueOnce(new ApiError(400, 'from must be before to'));
    api.getHistory.mockResolvedValue({ entries: [], days: [] });
    render(<HistoryPanel api={api} userId={7} now={now} />);

    expect((await screen.findByRole('alert')).textContent).toContain('from must be before to');
    fireEvent.click(screen.getByRole('button', { name: 'Retry' }));

    expect(await screen.findByRole('table')).toBeTruthy();
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('keeps the 30-day table when the slower 7-day response arrives last', async () => {
    const api = fakeApi();
    let sevenDays: (history: History) => void = () => {};
    api.getHistory.mockReturnValueOnce(new Promise((resolve) => (sevenDays = resolve)));
    api.getHistory.mockResolvedValueOnce({ entries: [], days: [] });
    render(<HistoryPanel api={api} userId={7} now={now} />);

    fireEvent.click(screen.getByRole('radio', { name: 'Last 30 days' }));
    expect(await screen.findByText('Hours worked per day, last 30 days')).toBeTruthy();
    await act(async () => {
      sevenDays({ entries: [], days: [] });
      await Promise.resolve();
    });

    expect(screen.getByText('Hours worked per day, last 30 days')).toBeTruthy();
    expect(within(screen.getByRole('table')).getAllByRole('row')).toHaveLength(32);
  });
});
