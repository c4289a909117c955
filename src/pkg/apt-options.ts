/**
 * apt's binary caches (pkgcache.bin and srcpkgcache.bin, ~40 MB each from Debian's lists) on the session's own
 * /run tmpfs instead of /var/cache/apt: apt rebuilds them from the lists in each step anyway, and `apt-get clean`
 * deleted them before any layer or output was made, so written into the guest's filesystem they only cost
 * ~80 MB of writes through the loop device and the export, and left as many freed blocks in the step's layer.
 * Every apt command of a step's transaction gets these, so each reuses the cache the one before it built;
 * `apt-get clean` does not, and still removes whatever /var/cache/apt held.
 */
export const APT_CACHE_OPTIONS = ['-o', 'Dir::Cache::pkgcache=/run/imagebuilder-apt-pkgcache.bin', '-o', 'Dir::Cache::srcpkgcache=/run/imagebuilder-apt-srcpkgcache.bin'];
