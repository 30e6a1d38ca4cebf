// A runtime description of a hand-written API type, checked by the compiler against
// that type, so a JSON fixture can be checked against the type at run time.

/** A field that may be `null`, and what it is otherwise. */
export class Nullable<S> {
  readonly of: S;

  constructor(of: S) {
    this.of = of;
  }
}

export const nullable = <S>(of: S) => new Nullable(of);

/**
 * The one shape that describes `T`: `'string'`, `'number'` or `'boolean'` for a leaf,
 * `nullable(...)` for `X | null`, `[element]` for an array, and an object with
 * exactly `T`'s keys. Writing `const s: Shape<User> = {...}` fails to compile when a
 * key is missing, extra, or has another type than in `User`.
 */
export type Shape<T> = [T] extends [string]
  ? 'string'
  : [T] extends [number]
    ? 'number'
    : [T] extends [boolean]
      ? 'boolean'
      : null extends T
        ? Nullable<Shape<NonNullable<T>>>
        : T extends readonly (infer E)[]
          ? readonly [Shape<E>]
          : { readonly [K in keyof T]-?: Shape<T[K]> };

/** Any shape, as the checker walks it. */
export type AnyShape =
  | 'string'
  | 'number'
  | 'boolean'
  | Nullable<AnyShape>
  | readonly [AnyShape]
  | { readonly [key: string]: AnyShape };

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

/**
 * Every way `value` differs from `shape`, one line each with its JSON path: missing
 * and unexpected keys, wrong types, and empty arrays (which would show no element to
 * check). Empty when `value` has exactly the shape.
 */
export function shapeMismatches(value: unknown, shape: AnyShape, path = '$'): string[] {
  if (shape instanceof Nullable) {
    return value === null ? [] : shapeMismatches(value, shape.of, path);
  }
  if (typeof shape === 'string') {
    return typeof value === shape ? [] : [`${path}: expected ${shape}, got ${describe(value)}`];
  }
  if (Array.isArray(shape)) {
    if (!Array.isArray(value)) return [`${path}: expected array, got ${describe(value)}`];
    if (value.length === 0) return [`${path}: empty array, so no element shows its shape`];
    const [element] = shape as readonly [AnyShape];
    return value.flatMap((item, i) => shapeMismatches(item, element, `${path}[${i}]`));
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return [`${path}: expected object, got ${describe(value)}`];
  }
  const fields = shape as { readonly [key: string]: AnyShape };
  const record = value as Record<string, unknown>;
  const missing = Object.keys(fields)
    .filter((key) => !Object.hasOwn(record, key))
    .map((key) => `${path}.${key}: missing`);
  const unexpected = Object.keys(record)
    .filter((key) => !Object.hasOwn(fields, key))
    .map((key) => `${path}.${key}: not in the TypeScript type`);
  const nested = Object.keys(fields)
    .filter((key) => Object.hasOwn(record, key))
    .flatMap((key) => shapeMismatches(record[key], fields[key], `${path}.${key}`));
  return [...missing, ...unexpected, ...nested];
}
