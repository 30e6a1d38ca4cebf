import { ErrorMessage } from './ErrorMessage';

export interface LoadStatusProps {
  /** The load failure to show, with a Retry button; `null` when there is none. */
  error: string | null;
  /** True while nothing has arrived yet (and no error). */
  loading: boolean;
  loadingText: string;
  onRetry: () => void;
}

/** What a panel shows before its data arrives: a status line, or the error and Retry. */
export function LoadStatus({ error, loading, loadingText, onRetry }: LoadStatusProps) {
  if (error) {
    return (
      <ErrorMessage message={error}>
        <button type="button" className="link-button" onClick={onRetry}>
          Retry
        </button>
      </ErrorMessage>
    );
  }
  if (loading) {
    return (
      <p className="muted" role="status">
        {loadingText}
      </p>
    );
  }
  return null;
}
