import { describe, expect, it } from 'vitest';
import type { Entry } from './api';
import {
  addDays,
  fillDays,
  formatClockTime,
  formatDayLabel,
  formatDuration,
  formatHours,
  lastDaysRange,
  toIsoDate,
  totalSeconds,
  workedSecondsToday,
} from './format';

function entry(id: number, clockIn: Date, clockOut: Date | null): Entry {
  return {
    id,
    user_id: 1,
    clock_in: clockIn.toISOString(),
    clock_out: clockOut ? clockOut.toISOString() : null,
    duration_seconds: clockOut ? (clockOut.getTime() - clockIn.getTime()) / 1000 : null,
  };
}

describe('formatDuration', () => {
  it.each([
    [0, '0m'],
    [59, '0m'],
    [60, '1m'],
    [3599, '59m'],
    [3600, '1h 00m'],
    [5400, '1h 30m'],
    [8 * 3600 + 5 * 60 + 59, '8h 05m'],
    [36 * 3600, '36h 00m'],
  ])('%i s → %s', (seconds, expected) => {
    expect(formatDuration(seconds)).toBe(expected);
  });

  it('treats negative, NaN and infinite values as zero', () => {
    expect(formatDuration(-120)).toBe('0m');
    expect(formatDuration(Number.NaN)).toBe('0m');
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe('0m');
  });
});

describe('formatHours', () => {
  it.each([
    [0, '0.00'],
    [900, '0.25'],
    [5400, '1.50'],
    [27000, '7.50'],
    [3600 * 40, '40.00'],
    [-5, '0.00'],
  ])('%i s → %s h', (seconds, expected) => {
    expect(formatHours(seconds)).toBe(expected);
  });
});

describe('formatClockTime', () => {
  it('formats local 24h HH:MM', () => {
    expect(formatClockTime(new Date(2024, 0, 15, 9, 5, 30))).toBe('09:05');
    expect(formatClockTime(new Date(2024, 0, 15, 23, 59).toISOString())).toBe('23:59');
  });

  it('returns an empty string for invalid input', () => {
    expect(formatClockTime('not a date')).toBe('');
  });
});

describe('dates', () => {
  it('toIsoDate uses the local calendar date', () => {
    expect(toIsoDate(new Date(2024, 1, 29, 23, 30))).toBe('2024-02-29');
  });

  it('addDays crosses month and year boundaries', () => {
    expect(toIsoDate(addDays(new Date(2024, 11, 31), 1))).toBe('2025-01-01');
    expect(toIsoDate(addDays(new Date(2024, 2, 1), -1))).toBe('2024-02-29');
  });

  it('lastDaysRange is inclusive of today', () => {
    expect(lastDaysRange(7, new Date(2024, 0, 3, 12))).toEqual({
      from: '2023-12-28',
      to: '2024-01-03',
    });
    expect(lastDaysRange(1, new Date(2024, 0, 3))).toEqual({ from: '2024-01-03', to: '2024-01-03' });
  });

  it('formatDayLabel gives weekday, day and month', () => {
    expect(formatDayLabel('2024-01-15')).toBe('Mon 15 Jan');
  });
});

describe('fillDays and totalSeconds', () => {
  it('fills missing days with zero, oldest first, and totals them', () => {
    const days = fillDays({ from: '2024-01-01', to: '2024-01-04' }, [
      { date: '2024-01-03', worked_seconds: 3600 },
      { date: '2024-01-01', worked_seconds: 1800 },
      { date: '2023-12-31', worked_seconds: 999 }, // outside the range: ignored
    ]);
    expect(days).toEqual([
      { date: '2024-01-01', worked_seconds: 1800 },
      { date: '2024-01-02', worked_seconds: 0 },
      { date: '2024-01-03', worked_seconds: 3600 },
      { date: '2024-01-04', worked_seconds: 0 },
    ]);
    expect(totalSeconds(days)).toBe(5400);
  });

  it('has a total of zero for no days', () => {
    expect(totalSeconds([])).toBe(0);
  });
});

describe('workedSecondsToday', () => {
  const now = new Date(2024, 0, 15, 14, 0);

  it('sums closed entries of today', () => {
    const entries = [
      entry(1, new Date(2024, 0, 15, 8, 0), new Date(2024, 0, 15, 12, 0)),
      entry(2, new Date(2024, 0, 15, 12, 30), new Date(2024, 0, 15, 13, 0)),
    ];
    expect(workedSecondsToday(entries, now)).toBe(4.5 * 3600);
  });

  it('counts an open entry up to now', () => {
    const entries = [entry(1, new Date(2024, 0, 15, 13, 15), null)];
    expect(workedSecondsToday(entries, now)).toBe(45 * 60);
  });

  it('clips entries that started yesterday and ignores older ones', () => {
    const entries = [
      entry(1, new Date(2024, 0, 14, 9, 0), new Date(2024, 0, 14, 17, 0)),
      entry(2, new Date(2024, 0, 14, 23, 0), new Date(2024, 0, 15, 1, 0)),
    ];
    expect(workedSecondsToday(entries, now)).toBe(3600);
  });
});
