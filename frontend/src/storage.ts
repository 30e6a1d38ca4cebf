// Remembers the selected user between visits.

export const SELECTED_USER_KEY = 'timeManager.selectedUserId';

function storage(): Storage | null {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    // Access can throw (e.g. storage disabled by privacy settings).
    return null;
  }
}

export function loadSelectedUserId(): number | null {
  const raw = storage()?.getItem(SELECTED_USER_KEY) ?? null;
  if (raw === null || !/^\d+$/.test(raw)) return null;
  const id = Number(raw);
  return Number.isSafeInteger(id) ? id : null;
}

export function saveSelectedUserId(id: number): void {
  try {
    storage()?.setItem(SELECTED_USER_KEY, String(id));
  } catch {
    // Quota or privacy errors: the app still works, it just won't remember.
  }
}

export function clearSelectedUserId(): void {
  try {
    storage()?.removeItem(SELECTED_USER_KEY);
  } catch {
    // Ignore, as above.
  }
}
