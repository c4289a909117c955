/** The library API: everything the commands do, usable without oclif. */
export { apply, defaultOutputPath, exportWorkImage, prepareWorkImage, type ApplyOptions, type ApplyResult, type ExportOptions, type WorkImageResult } from './pipeline/apply.js';
export type { BuildEvent } from './pipeline/events.js';
export { LayerStore, stepKeys } from './pipeline/layers.js';
export { SPARSIFY_MODES, type SparsifyMode } from './pipeline/output.js';
export { verifyImage, type VerifiedImage } from './pipeline/verify.js';
export { loadRecipe, parseRecipe, type Recipe, type RecipeProblem } from './recipe/load.js';
export { recipeSchema } from './recipe/schema.js';
export { STEP_TYPES, findStepType } from './steps/registry.js';
export { MOUNT_BACKEND_NAMES, type MountBackendName } from './mount/backend.js';
export type { Bom } from './bom/collect.js';
export { ImageBuilderError, EXIT_CODES, type ErrorCode } from './util/errors.js';
export { createLogger, type Logger } from './util/log.js';
export { withInterrupts } from './util/signals.js';
export { TOOL_VERSION } from './version.js';
export { loadMatrix, parseMatrix, type Matrix, type MatrixBuild } from './matrix/load.js';
export { runMatrix, selectBuilds, matrixOutcome, type MatrixResult, type BuildResult } from './matrix/run.js';
export { emitArgo, emitJobs, manifestsYaml, type EmitOptions } from './matrix/emit.js';
export { EXIT_CODE_MEANINGS } from './util/errors.js';
