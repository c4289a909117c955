/** Linux's dev_t encoding (glibc's gnu_dev_major/minor), from stat's rdev (a bigint with { bigint: true }). */
export function deviceNumbers(rdev: bigint | number): { major: number; minor: number } {
  const dev = BigInt(rdev);
  return {
    major: Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)),
    minor: Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn)),
  };
}
