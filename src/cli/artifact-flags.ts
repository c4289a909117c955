import { Flags } from '@oclif/core';
import { SBOM_FORMATS, type ArtifactOptions, type SbomFormat } from '../pipeline/apply.js';
import { OUTPUT_FORMATS, type OutputFormat } from '../image/formats.js';
import { SPARSIFY_MODES, type SparsifyMode } from '../pipeline/output.js';
import { ImageBuilderError } from '../util/errors.js';

export const sparsifyFlag = {
  sparsify: Flags.string({ description: "how to sparsify the output: auto (fstrim every mounted filesystem, swap made again, virt-sparsify --in-place only for what this host did not mount), virt-sparsify (the libguestfs appliance for all), fstrim, or none", options: [...SPARSIFY_MODES], default: 'auto', env: 'IMAGEBUILDER_SPARSIFY' }),
};

/** How phase 2 writes its artifacts: shared by `apply` and `export`. */
export const artifactFlags = {
    format: Flags.string({
      description:
        "output format; several as a comma-separated list or repeated flags, each written beside the first; tar: the guest's root filesystem as a tarball; ova: OVF + streamOptimized VMDK (vSphere, VirtualBox); gce: disk.raw in a .tar.gz (GCE) [default: the input's format]",
      options: [...OUTPUT_FORMATS],
      multiple: true,
      delimiter: ',',
    }),
    compress: Flags.boolean({ description: 'compress qcow2 outputs', default: false }),
    sbom: Flags.string({
      description: 'standard SBOMs written beside the BOM (<output>.cdx.json, <output>.spdx.json): a comma-separated list of cyclonedx, spdx, or none',
      default: 'cyclonedx,spdx',
      env: 'IMAGEBUILDER_SBOM',
      parse: async (value) => {
        const formats = value.split(',').map((f) => f.trim()).filter(Boolean);
        const bad = formats.filter((f) => f !== 'none' && !(SBOM_FORMATS as readonly string[]).includes(f));
        if (bad.length) throw new ImageBuilderError('BAD_INPUT', `--sbom: unknown format ${bad.join(', ')}`, { hint: `a comma-separated list of ${SBOM_FORMATS.join(', ')}, or none` });
        return formats.join(',');
      },
    }),
    ...sparsifyFlag,
};

export function artifactOptions(flags: { format?: string[]; compress: boolean; sbom: string; sparsify: string }): ArtifactOptions {
  return {
    sparsify: flags.sparsify as SparsifyMode,
    formats: flags.format as OutputFormat[] | undefined,
    compress: flags.compress,
    sbom: flags.sbom.split(',').filter((f): f is SbomFormat => f !== 'none' && f !== ''),
  };
}
