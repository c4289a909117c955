import { commandCheck, failedUnitsCheck, kernelModuleCheck, kernelParamCheck, serviceCheck } from './kinds.js';
import type { Check, CheckType } from './types.js';
import { IN_IMAGE_BOM_PATH } from '../util/paths.js';

/**
 * Built-in suites. `hygiene` is what kubernetes-sigs/image-builder checks an image for before it ships (nothing
 * of one machine left in it), on the image itself: a booted guest has made its own keys and state by then.
 * `node` is what a Kubernetes node needs at boot, with the modules and kernel parameters the recipe set.
 */

export const SUITES = ['hygiene', 'node'] as const;
export type SuiteName = (typeof SUITES)[number];

/** A suite's check; `imageOnly`: judged on the image before first boot, skipped in a booted guest. */
export type SuiteCheck = Check & { name: string; imageOnly?: boolean };

const check = <Spec>(suite: SuiteName, name: string, type: CheckType<Spec>, spec: Spec, imageOnly = false): SuiteCheck => ({
  type, spec, name, location: `suite ${suite}`, ...(imageOnly ? { imageOnly } : {}),
});

export function hygieneSuite(): SuiteCheck[] {
  const onImage = (name: string, run: string) => check('hygiene', name, commandCheck, { run, boot: false }, true);
  return [
    onImage('no SSH host keys', '! ls /etc/ssh/ssh_host_*key* >/dev/null 2>&1'),
    onImage('machine-id empty or uninitialized', 'id=$(cat /etc/machine-id 2>/dev/null); [ -z "$id" ] || [ "$id" = uninitialized ]'),
    onImage('no cloud-init instance state', '[ ! -e /var/lib/cloud/instance ] && [ -z "$(ls -A /var/lib/cloud/instances 2>/dev/null)" ]'),
    onImage('no core dumps', '[ -z "$(find /var/crash /var/lib/systemd/coredump -mindepth 1 -print -quit 2>/dev/null)" ]'),
    onImage('/var/log under 200 MB', '[ "$(du -sk /var/log 2>/dev/null | cut -f1)" -lt 204800 ]'),
  ];
}

/** What the recipe set up that a booted node must show: modules loaded, kernel parameters live. */
export interface NodeExpectations {
  modules: string[];
  sysctls: Record<string, string | number>;
  /** Units that had failed in the base image already (a booted base's `failed_units`). */
  baseFailures?: string[];
}

/**
 * Every image a container-images step preloaded, as the in-image BOM lists them (`"reference"`, and the
 * `"namespace"` it went into: k8s.io when a record has none), is in that containerd namespace on the running
 * node: an air-gapped node whose pause image did not survive cannot start a pod. Nothing preloaded, nothing
 * to check. The BOM is read as JSON.stringify(…, null, 2) writes it: one key per line.
 */
function preloadedImagesPresent(socket: string, bomPath = IN_IMAGE_BOM_PATH): string {
  const address = socket.replace(/^unix:\/\//, '');
  return [
    `pairs=$(awk -F'"' '$2 == "reference" { ref = $4 } $2 == "namespace" { ns = $4 } /^[[:space:]]*}/ { if (ref != "") print (ns != "" ? ns : "k8s.io"), ref; ref = ""; ns = "" }' ${bomPath} 2>/dev/null)`,
    '[ -n "$pairs" ] || { echo "nothing preloaded"; exit 0; }',
    `missing=$(printf '%s\n' "$pairs" | while read -r ns ref; do ctr --address ${address} --namespace "$ns" images ls -q 2>/dev/null | grep -qxF "$ref" || { printf ' %s' "$ref"; [ "$ns" = k8s.io ] || printf ' (namespace %s)' "$ns"; }; done)`,
    '[ -z "$missing" ] || { echo "missing:$missing"; exit 1; }',
  ].join('\n');
}

export function nodeSuite(expect: NodeExpectations = { modules: [], sysctls: {} }): SuiteCheck[] {
  const socket = 'unix:///run/containerd/containerd.sock';
  return [
    check('node', 'boot reached running (or only the base image\'s failures)', failedUnitsCheck, { allowed: expect.baseFailures ?? [] }),
    check('node', 'containerd enabled and running', serviceCheck, { name: 'containerd', enabled: true, running: true }),
    check('node', 'containerd answers on its socket', commandCheck, { run: 'ctr --address /run/containerd/containerd.sock version' }),
    check('node', 'crictl info works (when crictl is installed)', commandCheck, { run: `! command -v crictl >/dev/null || crictl --runtime-endpoint ${socket} info >/dev/null` }),
    check('node', 'kubelet enabled', serviceCheck, { name: 'kubelet', enabled: true }),
    check('node', 'swap off', commandCheck, { run: '[ "$(grep -vc ^Filename /proc/swaps)" -eq 0 ]' }),
    check('node', 'the images the build preloaded (the pause image among them, when it was) are in containerd, each in its namespace', commandCheck, { run: preloadedImagesPresent(socket) }),
    ...expect.modules.map((name) => check('node', `module ${name} loaded`, kernelModuleCheck, { name, loaded: true })),
    // Ignored-error (-key) and glob settings name no one parameter.
    ...Object.entries(expect.sysctls)
      .filter(([name]) => !name.startsWith('-') && !name.includes('*'))
      .map(([name, value]) => check('node', `${name} = ${value}`, kernelParamCheck, { name, value })),
  ];
}
