import { execa } from 'execa';

/**
 * An OVF descriptor read back by libxml2's xmllint (an XML parser independent of the code that wrote it). The
 * DMTF's DSP8023 schema is not available offline, so instead of validating against it, `expectOvfStructure`
 * checks with XPath what that schema and both importers need: the envelope's namespace and section order, the
 * references between File, Disk and Items, and RASD elements in the schema's (alphabetical) order.
 */

const OVF = 'http://schemas.dmtf.org/ovf/envelope/1';
const RASD = 'http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData';

/** The result of an XPath expression over the document, as xmllint prints it (string() for values). */
export async function xpath(xml: string, expression: string): Promise<string> {
  const result = await execa('xmllint', ['--nonet', '--xpath', expression, '-'], { input: xml, reject: false });
  // xmllint exits 10 when a node set is empty; an empty string() is printed as nothing.
  if (result.exitCode !== 0 && result.exitCode !== 10) throw new Error(`xmllint: ${result.stderr}`);
  return result.exitCode === 10 ? '' : result.stdout.replace(/\n$/, '');
}

/** An attribute of the first element named `element` (any namespace), by its local name. */
export const ovfAttribute = (xml: string, element: string, attribute: string) =>
  xpath(xml, `string((//*[local-name()="${element}"])[1]/@*[local-name()="${attribute}"])`);

async function childNames(xml: string, parent: string): Promise<string[]> {
  const count = Number(await xpath(xml, `count(${parent}/*)`));
  const names: string[] = [];
  for (let i = 1; i <= count; i++) names.push(await xpath(xml, `concat(namespace-uri(${parent}/*[${i}]), " ", local-name(${parent}/*[${i}]))`));
  return names;
}

export async function expectOvfStructure(xml: string): Promise<void> {
  await execa('xmllint', ['--nonet', '--noout', '-'], { input: xml }); // well-formed, namespaces declared
  const envelope = '/*[local-name()="Envelope"]';
  expect(await xpath(xml, `namespace-uri(${envelope})`)).toBe(OVF);
  expect(await childNames(xml, envelope)).toEqual(['References', 'DiskSection', 'NetworkSection', 'VirtualSystem'].map((n) => `${OVF} ${n}`));
  const system = `${envelope}/*[local-name()="VirtualSystem"]`;
  expect(await childNames(xml, system)).toEqual(['Info', 'Name', 'OperatingSystemSection', 'VirtualHardwareSection'].map((n) => `${OVF} ${n}`));
  // Every Disk names a File, every disk Item a Disk, every Parent an Item.
  const fileId = await ovfAttribute(xml, 'File', 'id');
  expect(await ovfAttribute(xml, 'Disk', 'fileRef')).toBe(fileId);
  const diskId = await ovfAttribute(xml, 'Disk', 'diskId');
  expect(await xpath(xml, 'string(//*[local-name()="HostResource"])')).toBe(`ovf:/disk/${diskId}`);
  const hardware = `${system}/*[local-name()="VirtualHardwareSection"]`;
  const items = Number(await xpath(xml, `count(${hardware}/*[local-name()="Item"])`));
  const instanceIds: string[] = [];
  for (let i = 1; i <= items; i++) {
    const item = `${hardware}/*[local-name()="Item"][${i}]`;
    const fields = await childNames(xml, item);
    expect(fields.every((f) => f.startsWith(`${RASD} `))).toBe(true);
    const names = fields.map((f) => f.split(' ')[1]);
    expect(names).toEqual([...names].sort());
    expect(names).toEqual(expect.arrayContaining(['ElementName', 'InstanceID', 'ResourceType']));
    instanceIds.push(await xpath(xml, `string(${item}/*[local-name()="InstanceID"])`));
  }
  expect(new Set(instanceIds).size).toBe(items);
  const parent = await xpath(xml, 'string(//*[local-name()="Parent"])');
  expect(instanceIds).toContain(parent);
}
