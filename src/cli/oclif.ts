// oclif for the CLI's start (bin/run.js): bundled with the commands (bin/bundle-cli.js) into one copy, loaded
// from a few chunks instead of ~200 files of node_modules.
export { execute } from '@oclif/core';
