// Tests build from scratch unless they test the step cache itself (with their own IMAGEBUILDER_CACHE): a layer
// cached by an earlier run would let a test pass without really running its steps.
process.env.IMAGEBUILDER_NO_CACHE ??= '1';
