// `node --import ./bench/ts-register.js …`, or imported first: the test helpers (TypeScript) become importable.
import { register } from 'node:module';

register('./ts-hooks.js', import.meta.url);
