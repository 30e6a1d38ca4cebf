import { describe, expect, it } from 'vitest';
import { nullable, shapeMismatches, type AnyShape, type Shape } from './shape';

interface Item {
  id: number;
  name: string | null;
  tags: string[];
  parent: { ok: boolean } | null;
}

const item: Shape<Item> = {
  id: 'number',
  name: nullable('string'),
  tags: ['string'],
  parent: nullable({ ok: 'boolean' }),
};

describe('shapeMismatches', () => {
  it('accepts exactly the shape, with null where the type allows it', () => {
    expect(shapeMismatches({ id: 1, name: null, tags: ['a'], parent: null }, item)).toEqual([]);
    expect(shapeMismatches({ id: 1, name: 'x', tags: ['a'], parent: { ok: true } }, item)).toEqual(
      [],
    );
  });

  it('names every renamed, retyped or unexpected field by its path', () => {
    const value = { id: '1', title: 'x', tags: ['a', 2], parent: { ok: null } };

    expect(shapeMismatches(value, item)).toEqual([
      '$.name: missing',
      '$.title: not in the TypeScript type',
      '$.id: expected number, got string',
      '$.tags[1]: expected string, got number',
      '$.parent.ok: expected boolean, got null',
    ]);
  });

  it('refuses an empty array, which would show no element', () => {
    expect(shapeMismatches({ id: 1, name: null, tags: [], parent: null }, item)).toEqual([
      '$.tags: empty array, so no element shows its shape',
    ]);
  });

  it('does not take inherited properties for fields', () => {
    const shape: Record<string, AnyShape> = { toString: 'string' as const };
    expect(shapeMismatches({}, shape)).toEqual(['$.toString: missing']);
  });
});
