import { Type, type SchemaOptions, type Static, type TSchema, type TUnion, type TUnsafe } from '@sinclair/typebox';

/** A JSON Schema fragment (draft-07, as ajv reads it). */
export type JsonSchema = Record<string, unknown>;

/**
 * The schema as plain JSON: what the recipe schema, ajv and the docs get. TypeBox marks its schemas with symbol
 * keys (Kind, Optional); JSON.stringify leaves them out, as it would any other non-JSON value.
 */
export function plainSchema(schema: TSchema | JsonSchema): JsonSchema {
  return JSON.parse(JSON.stringify(schema)) as JsonSchema;
}

/*
 * TypeBox's own combinators emit shapes our schemas do not use (Union is `anyOf`, Literal adds a `type`, Record
 * becomes `patternProperties`), and recipe errors speak in terms of the schema's shape. These emit exactly the
 * JSON Schema keyword named, with the TypeScript type that keyword means.
 */

/** `oneOf`: exactly one of the schemas matches; the type is their union. */
export function OneOf<T extends TSchema[]>(schemas: [...T], options: SchemaOptions = {}): TUnsafe<Static<TUnion<T>>> {
  return Type.Unsafe<Static<TUnion<T>>>({ ...options, oneOf: schemas });
}

type Scalar = string | number | boolean;

/** `enum`: one of these values. */
export function Enum<const T extends readonly Scalar[]>(values: T, options: SchemaOptions = {}): TUnsafe<T[number]> {
  return Type.Unsafe<T[number]>({ ...options, enum: [...values] });
}

/** `const`: exactly this value. */
export function Const<const T extends Scalar>(value: T, options: SchemaOptions = {}): TUnsafe<T> {
  return Type.Unsafe<T>({ ...options, const: value });
}

/** An object whose every property's value is `value` (`additionalProperties: value`); `options` may constrain its names. */
export function Dictionary<T extends TSchema>(value: T, options: SchemaOptions = {}): TUnsafe<Record<string, Static<T>>> {
  return Type.Unsafe<Record<string, Static<T>>>({ type: 'object', ...options, additionalProperties: value });
}

/**
 * One item of a list of typed items (a recipe's steps, its checks): `{<common keys>, <type key>: value}`, the
 * type's key required; the item is titled and described by its type.
 */
export function typedItemSchema(type: { key: string; summary: string; description: string; schema: JsonSchema }, common: Record<string, JsonSchema>): JsonSchema {
  return {
    type: 'object',
    title: type.key,
    description: type.summary,
    additionalProperties: false,
    required: [type.key],
    properties: { ...common, [type.key]: { ...type.schema, description: type.description } },
  };
}

/** A property that must not be present (says "exactly one of" in a way ajv reports at the key). */
export const ABSENT: JsonSchema = { not: {} };
