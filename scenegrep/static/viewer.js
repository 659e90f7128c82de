// The 3D view: a scan's point cloud, dimmed, with one hit's points highlighted and framed.
// Renders on demand (after a change or an orbit), which keeps software rendering cheap.
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/OrbitControls.js';

const HIGHLIGHT = 0x00e5ff; // cyan: rare in indoor scans, unlike the orange of wood and furniture
const DIM = 0x8c8c8c; // multiplies the scan's own colours, so the highlight stands out
const HIT_SCALE = 1.6; // highlighted points are drawn this much larger
const MIN_FRAME = 0.5; // metres around the hit always in view, so a small hit keeps its context

// Decode the server's `bin` point format (README, "Server"): little-endian
// "SGPT" | u32 version | u32 n | u32 total | f32 xyz[n*3] | u8 rgb[n*3] + pad to 4 | u32 index[n].
export function decodePoints(buffer) {
  const head = new DataView(buffer, 0, 16);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== 'SGPT' || head.getUint32(4, true) !== 1) throw new Error('not a scenegrep point buffer');
  const n = head.getUint32(8, true);
  const total = head.getUint32(12, true);
  const rgbAt = 16 + 12 * n;
  const indexAt = rgbAt + 3 * n + ((4 - ((3 * n) % 4)) % 4);
  return {
    n, total,
    xyz: new Float32Array(buffer, 16, 3 * n),
    rgb: new Uint8Array(buffer, rgbAt, 3 * n),
    indices: new Uint32Array(buffer, indexAt, n),
  };
}

function cloudBox(xyz) {
  const box = new THREE.Box3();
  box.setFromArray(xyz);
  return box;
}

// The scan's up axis: its thinnest side (rooms are wider than tall), pointing away from the floor,
// the denser end of that axis (floors are seen more completely than ceilings).
function upAxis(xyz, box) {
  const size = box.getSize(new THREE.Vector3()).toArray();
  const axis = size.indexOf(Math.min(...size));
  const lo = box.min.getComponent(axis), span = size[axis] || 1;
  let low = 0, high = 0;
  for (let i = axis; i < xyz.length; i += 3) {
    const t = (xyz[i] - lo) / span;
    if (t < 0.1) low++; else if (t > 0.9) high++;
  }
  const up = new THREE.Vector3();
  up.setComponent(axis, low >= high ? 1 : -1);
  return up;
}

// Typical distance between neighbouring points. A scan samples surfaces: the 10 cm voxels it occupies
// measure their area (count x 10 cm x 10 cm), and n points on that area lie about sqrt(area / n) apart.
function pointSpacing(xyz, box) {
  const v = 0.1, n = xyz.length / 3;
  const { x: x0, y: y0, z: z0 } = box.min;
  const cells = new Set();
  for (let i = 0; i < xyz.length; i += 3) {
    cells.add(Math.floor((xyz[i] - x0) / v) * 2 ** 34 + Math.floor((xyz[i + 1] - y0) / v) * 2 ** 17
              + Math.floor((xyz[i + 2] - z0) / v));
  }
  return Math.min(Math.max(v * Math.sqrt(cells.size / Math.max(n, 1)), 1e-3), v);
}

function pointsObject(xyz, rgb, material) {
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute('position', new THREE.BufferAttribute(xyz, 3));
  if (rgb) geometry.setAttribute('color', new THREE.BufferAttribute(rgb, 3, true));
  geometry.computeBoundingSphere();
  return new THREE.Points(geometry, material);
}

export class PointView {
  constructor(canvas) {
    THREE.ColorManagement.enabled = false; // the scans' colours are shown as stored
    this.canvas = canvas;
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
    this.renderer.outputColorSpace = THREE.LinearSRGBColorSpace;
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
    this.renderer.setClearColor(0x16181d);
    this.scene = new THREE.Scene();
    this.camera = new THREE.PerspectiveCamera(50, 1, 0.01, 1000);
    this.scale = 1.5; // point size, in point spacings (the size control)
    this.spacing = 0.02;
    this.scanMaterial = new THREE.PointsMaterial({ vertexColors: true, color: DIM });
    this.hitMaterial = new THREE.PointsMaterial({ color: HIGHLIGHT });
    this.scanName = null;
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
  }

  resize() {
    const { clientWidth: w, clientHeight: h } = this.canvas.parentElement;
    if (!w || !h) return;
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.render();
  }

  // Show a scan's cloud (decoded); the orbit controls are rebuilt for the scan's up axis.
  setScan(name, cloud) {
    if (this.scanName === name) return;
    if (this.scan) { this.scene.remove(this.scan); this.scan.geometry.dispose(); }
    this.scan = pointsObject(cloud.xyz, cloud.rgb, this.scanMaterial);
    this.scene.add(this.scan);
    this.scanBox = cloudBox(cloud.xyz);
    this.spacing = pointSpacing(cloud.xyz, this.scanBox);
    this.setPointSize(this.scale);
    this.camera.up.copy(upAxis(cloud.xyz, this.scanBox));
    this.controls?.dispose();
    this.controls = new OrbitControls(this.camera, this.canvas);
    this.controls.addEventListener('change', () => this.render());
    this.scanName = name;
  }

  // Highlight a hit's points and frame them; returns the number of highlighted points.
  setHit(points) {
    if (this.hit) { this.scene.remove(this.hit); this.hit.geometry.dispose(); }
    this.hit = pointsObject(points.xyz, null, this.hitMaterial);
    this.hit.renderOrder = 1;
    this.scene.add(this.hit);
    this.frame(cloudBox(points.xyz));
    this.render();
    return points.n;
  }

  // Look at the box from the scan's inside, 35 degrees above its horizon, close enough to fill the view.
  frame(box) {
    const up = this.camera.up;
    const centre = box.getCenter(new THREE.Vector3());
    const radius = Math.max(box.getSize(new THREE.Vector3()).length() / 2, MIN_FRAME);
    const fov = THREE.MathUtils.degToRad(this.camera.fov);
    const dist = 1.4 * radius / Math.sin(Math.min(fov, fov * this.camera.aspect) / 2);
    const inward = this.scanBox.getCenter(new THREE.Vector3()).sub(centre);
    inward.addScaledVector(up, -inward.dot(up));
    if (inward.lengthSq() < 1e-6) inward.set(1, 1, 1).addScaledVector(up, -up.dot(new THREE.Vector3(1, 1, 1)));
    inward.normalize();
    const elevation = THREE.MathUtils.degToRad(35);
    const eye = centre.clone()
      .addScaledVector(inward, Math.cos(elevation) * dist)
      .addScaledVector(up, Math.sin(elevation) * dist);
    // stay under the ceiling, if the scan has one
    const top = up.dot(up.x + up.y + up.z > 0 ? this.scanBox.max : this.scanBox.min) - 0.1;
    const height = eye.dot(up);
    if (height > top && centre.dot(up) < top) eye.addScaledVector(up, top - height);
    this.camera.position.copy(eye);
    this.camera.near = Math.max(dist / 200, 0.005);
    this.camera.far = dist + 4 * this.scanBox.getSize(new THREE.Vector3()).length();
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(centre);
    this.controls.update();
  }

  // Point size in point spacings (world units, so the cloud looks like a surface at any distance).
  setPointSize(scale) {
    this.scale = scale;
    this.scanMaterial.size = scale * this.spacing;
    this.hitMaterial.size = HIT_SCALE * scale * this.spacing;
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
  }
}
