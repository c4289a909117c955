import { plainRelative } from '../../src/pkg/rpm-package-cache.js';

describe('rpm package cache: the locations it uses as guest paths', () => {
  test('plain relative rpm paths, no deeper than the removal walk reaches', () => {
    expect(plainRelative('x86_64/kubelet-1.36.2-150500.1.1.x86_64.rpm')).toBe('x86_64/kubelet-1.36.2-150500.1.1.x86_64.rpm');
    expect(plainRelative('a/b/c/d/p.rpm')).toBe('a/b/c/d/p.rpm');
    // Deeper than the walk: never offered or kept, so nothing the cache puts there escapes removal.
    expect(plainRelative('a/b/c/d/e/p.rpm')).toBeUndefined();
    for (const bad of ['../p.rpm', 'a/./p.rpm', 'a//p.rpm', '/abs/p.rpm', 'a/p.deb', 'a/.hidden.rpm']) expect(plainRelative(bad)).toBeUndefined();
  });
});
