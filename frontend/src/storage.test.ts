import { describe, expect, it } from 'vitest';
import {
  SELECTED_USER_KEY,
  clearSelectedUserId,
  loadSelectedUserId,
  saveSelectedUserId,
} from './storage';

describe('selected user storage', () => {
  it('round-trips the selected user id', () => {
    expect(loadSelectedUserId()).toBeNull();
    saveSelectedUserId(42);
    expect(localStorage.getItem(SELECTED_USER_KEY)).toBe('42');
    expect(loadSelectedUserId()).toBe(42);
    clearSelectedUserId();
    expect(loadSelectedUserId()).toBeNull();
  });

  it('ignores garbage values', () => {
    localStorage.setItem(SELECTED_USER_KEY, 'abc');
    expect(loadSelectedUserId()).toBeNull();
    localStorage.setItem(SELECTED_USER_KEY, '-3');
    expect(loadSelectedUserId()).toBeNull();
  });
});
