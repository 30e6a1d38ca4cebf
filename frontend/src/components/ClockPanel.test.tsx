import { fireEvent, render, screen, waitFor } from '@testing-library/react';
import { describe, expect, it, vi } from 'vitest';
import { ApiError } from '../api';
import { ada, fakeApi, makeEntry } from '../test/fakeApi';
import { ClockPanel } from './ClockPanel';

// Local time, so the expected HH:MM does not depend on the machine's time zone.
const NOW = new Date(2024, 0, 15, 14, 0);
const now = () => NOW;
const morning = makeEntry(1, new Date(2024, 0, 15, 8, 0), new Date(2024, 0, 15, 12, 0));

function setup(clockedIn: boolean) {
  const api = fakeApi();
  const open = makeEntry(2, new Date(2024, 0, 15, 13, 15), null);
  api.getClockStatus.mockResolvedValue(
    clockedIn ? { clocked_in: true, entry: open } : { clocked_in: false, entry: null },
  );
  api.getHistory.mockResolvedValue({
    entries: clockedIn ? [morning, open] : [morning],
    days: [{ date: '2024-01-15', worked_seconds: 4 * 3600 }],
  });
  const onClockChange = vi.fn();
  render(<ClockPanel api={api} user={ada} now={now} onClockChange={onClockChange} />);
  return { api, onClockChange, open };
}

describe('ClockPanel', () => {
  it("shows today's status and time worked", async () => {
    const { api } = setup(true);

    expect(await screen.findByText('Clocked in since 13:15')).toBeTruthy();
    expect(screen.getByText('4h 45m')).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Clock out' })).toBeTruthy();
    expect(api.getHistory).toHaveBeenCalledWith(ada.id, { from: '2024-01-14', to: '2024-01-15' });
  });

  it('clocks in on click and toggles to "Clock out"', async () => {
    const { api, onClockChange } = setup(false);
    const opened = makeEntry(5, new Date(2024, 0, 15, 13, 30), null);
    api.clockIn.mockResolvedValue(opened);

    fireEvent.click(await screen.findByRole('button', { name: 'Clock in' }));

    expect(await screen.findByRole('button', { name: 'Clock out' })).toBeTruthy();
    expect(screen.getByText('Clocked in since 13:30')).toBeTruthy();
    expect(screen.getByText('4h 30m')).toBeTruthy();
    expect(api.clockIn).toHaveBeenCalledWith(ada.id);
    expect(onClockChange).toHaveBeenCalledTimes(1);
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('clocks out on click and toggles to "Clock in"', async () => {
    const { api, open } = setup(true);
    api.clockOut.mockResolvedValue({ ...open, clock_out: NOW.toISOString(), duration_seconds: 2700 });

    fireEvent.click(await screen.findByRole('button', { name: 'Clock out' }));

    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(screen.getByText('Not clocked in')).toBeTruthy();
    expect(screen.getByText('4h 45m')).toBeTruthy();
    expect(api.clockOut).toHaveBeenCalledWith(ada.id);
  });

  it('shows the error message and keeps the state when clocking in fails', async () => {
    const { api, onClockChange } = setup(false);
    api.clockIn.mockRejectedValue(new ApiError(500, 'database unavailable'));

    fireEvent.click(await screen.findByRole('button', { name: 'Clock in' }));

    expect((await screen.findByRole('alert')).textContent).toBe('database unavailable');
    expect(screen.getByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(screen.getByText('Not clocked in')).toBeTruthy();
    expect(onClockChange).not.toHaveBeenCalled();
    expect(api.getClockStatus).toHaveBeenCalledTimes(1);
  });

  it('shows the 409 message and reloads the status when it was stale', async () => {
    const { api, open } = setup(false);
    api.clockIn.mockRejectedValue(new ApiError(409, 'already clocked in'));
    // Meanwhile the user clocked in elsewhere.
    api.getClockStatus.mockResolvedValue({ clocked_in: true, entry: open });

    fireEvent.click(await screen.findByRole('button', { name: 'Clock in' }));

    expect((await screen.findByRole('alert')).textContent).toBe('already clocked in');
    expect(await screen.findByRole('button', { name: 'Clock out' })).toBeTruthy();
    await waitFor(() => expect(api.getClockStatus).toHaveBeenCalledTimes(2));
  });

  it('shows a load error with a retry', async () => {
    const api = fakeApi();
    api.getClockStatus.mockRejectedValueOnce(new ApiError(0, 'Could not reach the server.'));
    api.getClockStatus.mockResolvedValue({ clocked_in: false, entry: null });
    api.getHistory.mockResolvedValue({ entries: [], days: [] });
    render(<ClockPanel api={api} user={ada} now={now} />);

    expect((await screen.findByRole('alert')).textContent).toContain('Could not reach the server.');
    fireEvent.click(screen.getByRole('button', { name: 'Retry' }));

    expect(await screen.findByRole('button', { name: 'Clock in' })).toBeTruthy();
    expect(screen.getByText('0m')).toBeTruthy();
    expect(screen.queryByRole('alert')).toBeNull();
  });
});
