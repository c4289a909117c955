import type { Static, TSchema } from '@sinclair/typebox';
import type { ChrootSession } from '../chroot/session.js';
import type { GuestTimeout } from '../chroot/sandbox.js';
import type { Distro } from '../distro/families.js';
import type { PackageBundleUse } from '../pkg/types.js';
import type { StepDownloads } from '../fetch/downloads.js';
import type { HttpTimeouts } from '../fetch/http.js';
import type { Logger } from '../util/log.js';
import { plainSchema, type JsonSchema } from '../util/json-schema.js';

/** What steps put into the image, as the BOM lists it. */
export interface RecordedFile {
  path: string;
  sha256: string;
  /** config: written by the recipe; download: fetched from `source`; copy: from the build host. */
  kind: 'config' | 'download' | 'copy';
  source?: string;
}

export interface RecordedUnit {
  unit: string;
  state: 'enabled' | 'disabled' | 'masked' | 'unmasked';
}

export interface RecordedImage {
  reference: string;
  digest: string;
  /** The containerd namespace it was imported into (absent in records made before it was kept: k8s.io). */
  namespace?: string;
}

export interface StepRecorder {
  file(entry: RecordedFile): void;
  unit(entry: RecordedUnit): void;
  image(entry: RecordedImage): void;
}

/** A recorder that keeps everything in arrays: what apply() puts into the BOM. */
export function createRecorder() {
  const files: RecordedFile[] = [];
  const units: RecordedUnit[] = [];
  const images: RecordedImage[] = [];
  const recorder: StepRecorder = {
    file: (entry) => void files.push(entry),
    unit: (entry) => void units.push(entry),
    image: (entry) => void images.push(entry),
  };
  return { recorder, files, units, images };
}

/** What a step may know about its recipe without an image: where host paths start, the variables. */
export interface StepEnvironment {
  /** Directory of the recipe file: relative host paths in steps are relative to it. */
  recipeDir: string;
  /** Where host files may be read from (the recipe's directory, then --allow-host-path's); [recipeDir] when absent. */
  hostRoots?: readonly string[];
  /** The recipe's variables, resolved. */
  variables: Record<string, string>;
}

export interface StepContext extends StepEnvironment {
  session: ChrootSession;
  distro: Distro;
  log: Logger;
  signal?: AbortSignal;
  /** The step's label in messages: "step 2 (install containerd)". */
  label: string;
  /** Where the step reports what it put into the image, for the BOM. */
  record: StepRecorder;
  /** The guest's architecture as its package manager names it (amd64, arm64 …), when known. */
  architecture?: string;
  /** The limits of the step's downloads (--fetch-deadline, --fetch-min-rate); the defaults otherwise. */
  fetchTimeouts?: HttpTimeouts;
  /** Seconds a run step may take when it sets no timeout of its own (the recipe's limits.timeout, or 30 minutes), and which. */
  runTimeout?: GuestTimeout;
  /** The build's private work directory: a step's temporary host files go there (removed with it, on the disk the user chose). */
  workDir: string;
  /** The package cache shared by builds (none with --no-cache). */
  packageCacheDir?: string;
  /**
   * The step's cache key (the base image and the recipe's steps up to this one): what a package manager keeps of
   * this step for later builds (apt's srcpkgcache.bin) is shared within it, exactly as the step's layer is.
   */
  packageCacheScope?: string;
  /** Where downloads come from: the network, or an air-gapped bundle (making one records them; apply --bundle serves them). */
  downloads?: StepDownloads;
  /** bundle: what the package manager fetched is kept; apply --bundle: it sees only the bundle's repository. */
  packageBundle?: PackageBundleUse;
  /** Host files beside the recipe that a bundle carries (container archives): kept while one is made, served from it. */
  hostFiles?: StepHostFiles;
}

/**
 * Host files a step reads beside the recipe that an air-gapped bundle carries, because they are large and made
 * elsewhere (container image archives): making a bundle keeps each one; apply --bundle reads the bundle's copy.
 */
export interface StepHostFiles {
  /**
   * The file to read for the one the recipe names `named` (relative to the recipe file naming it), found on this
   * host at `hostPath`: that path itself, or the bundle's verified copy. `what` names it in messages.
   */
  path(named: string, hostPath: string, what: string): Promise<string>;
}

/**
 * One step type, defined once: the schema of its value, its documentation, and what it does.
 * The registry of these drives recipe validation, schemas/recipe.schema.json, `imagebuilder steps` and the README.
 */
export interface StepType<Spec = unknown> {
  /** The key that selects this type in a recipe step: `- packages: {...}`. */
  readonly key: string;
  readonly summary: string;
  readonly description: string;
  /** An example value, as it would appear under the key. */
  readonly example: Spec;
  /** The JSON Schema of its value, plain JSON (defineStep makes it from the TypeBox schema Spec comes from). */
  readonly schema: JsonSchema;
  /** A short description of one use, for logs when the step has no name. */
  describe(spec: Spec): string;
  /**
   * True when this use of the step needs the guest's package manager (a known distro family): apply checks it
   * for every step before the first one runs, so an unknown distribution fails before anything is changed.
   */
  needsPackageManager?(spec: Spec): boolean;
  /**
   * The host paths this step's value names, each with where in the value it is (for a file:line:column): the
   * loader confines them to the recipe's directory before anything else is checked.
   */
  hostPaths?(spec: Spec): { at: (string | number)[]; path: string }[];
  /** Problems found without an image (a missing host file, an undefined template variable): `validate` reports them. */
  check?(spec: Spec, environment: StepEnvironment): string[];
  /**
   * For the step cache: digests of what the step reads besides its value (host files), and why its result may
   * differ when run again with the same value (the network without a pin). Absent: the value says it all.
   */
  cacheInputs?(spec: Spec, environment: StepEnvironment): Promise<StepCacheInputs>;
  /**
   * The only guest paths this use of the step writes (the parents it makes are under them), when it can say so;
   * absent, it may write anywhere (a command, a package manager). A step none of whose paths an initramfs is
   * built from is not watched for one (two walks of the kernels' modules, ~0.1 s).
   */
  writesOnly?(spec: Spec): string[];
  run(context: StepContext, spec: Spec): Promise<void>;
}

/** What a step reads besides its value: digests of host inputs, and whether it depends on the network unpinned. */
export interface StepCacheInputs {
  digests?: Record<string, string>;
  unpinned?: string;
}

/**
 * A step type whose value's schema is written once, with TypeBox: the JSON Schema recipes are validated against and
 * the TypeScript type (Spec) its functions receive both come from it, so they cannot disagree.
 */
export function defineStep<Schema extends TSchema>(type: Omit<StepType<Static<Schema>>, 'schema'> & { schema: Schema }): StepType<Static<Schema>> {
  return { ...type, schema: plainSchema(type.schema) };
}
