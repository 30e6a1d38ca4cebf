import type { ReactNode } from 'react';

export interface ErrorMessageProps {
  message: string;
  children?: ReactNode;
}

/** An error announced to assistive technology as soon as it appears. */
export function ErrorMessage({ message, children }: ErrorMessageProps) {
  return (
    <div className="error" role="alert">
      <span>{message}</span>
      {children}
    </div>
  );
}
