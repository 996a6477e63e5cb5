/**
 * Virtio feature bits (virtio 1.x sections 5.1.3 and 6) and the vhost-user
 * bit that shares their space, as bigint masks (features are 64-bit).
 */

/** Mask for feature bit `bit`. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** True when every bit of `mask` is set in `features`. */
export function hasFeature(features: bigint, mask: bigint): boolean {
  return (features & mask) === mask;
}

// ---- virtio-net device features (5.1.3) ----
export const VIRTIO_NET_F_CSUM = featureBit(0);
export const VIRTIO_NET_F_GUEST_CSUM = featureBit(1);
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = featureBit(2);
export const VIRTIO_NET_F_MTU = featureBit(3);
export const VIRTIO_NET_F_MAC = featureBit(5);
/** Legacy: "device handles packets with any GSO type". */
export const VIRTIO_NET_F_GSO = featureBit(6);
export const VIRTIO_NET_F_GUEST_TSO4 = featureBit(7);
export const VIRTIO_NET_F_GUEST_TSO6 = featureBit(8);
export const VIRTIO_NET_F_GUEST_ECN = featureBit(9);
export const VIRTIO_NET_F_GUEST_UFO = featureBit(10);
export const VIRTIO_NET_F_HOST_TSO4 = featureBit(11);
export const VIRTIO_NET_F_HOST_TSO6 = featureBit(12);
export const VIRTIO_NET_F_HOST_ECN = featureBit(13);
export const VIRTIO_NET_F_HOST_UFO = featureBit(14);
export const VIRTIO_NET_F_MRG_RXBUF = featureBit(15);
export const VIRTIO_NET_F_STATUS = featureBit(16);
export const VIRTIO_NET_F_CTRL_VQ = featureBit(17);
export const VIRTIO_NET_F_CTRL_RX = featureBit(18);
export const VIRTIO_NET_F_CTRL_VLAN = featureBit(19);
export const VIRTIO_NET_F_CTRL_RX_EXTRA = featureBit(20);
export const VIRTIO_NET_F_GUEST_ANNOUNCE = featureBit(21);
export const VIRTIO_NET_F_MQ = featureBit(22);
export const VIRTIO_NET_F_CTRL_MAC_ADDR = featureBit(23);
export const VIRTIO_NET_F_GUEST_USO4 = featureBit(54);
export const VIRTIO_NET_F_GUEST_USO6 = featureBit(55);
export const VIRTIO_NET_F_HOST_USO = featureBit(56);
/** Changes the header to 20 bytes: never offered by ferry. */
export const VIRTIO_NET_F_HASH_REPORT = featureBit(57);
export const VIRTIO_NET_F_GUEST_HDRLEN = featureBit(59);
export const VIRTIO_NET_F_RSS = featureBit(60);
export const VIRTIO_NET_F_RSC_EXT = featureBit(61);
export const VIRTIO_NET_F_STANDBY = featureBit(62);
export const VIRTIO_NET_F_SPEED_DUPLEX = featureBit(63);

// ---- device-independent features (6) ----
export const VIRTIO_F_NOTIFY_ON_EMPTY = featureBit(24);
export const VIRTIO_F_ANY_LAYOUT = featureBit(27);
export const VIRTIO_RING_F_INDIRECT_DESC = featureBit(28);
export const VIRTIO_RING_F_EVENT_IDX = featureBit(29);
/** vhost-user: GET/SET_PROTOCOL_FEATURES are available (shares virtio's "unused" bit 30). */
export const VHOST_USER_F_PROTOCOL_FEATURES = featureBit(30);
export const VIRTIO_F_VERSION_1 = featureBit(32);
export const VIRTIO_F_ACCESS_PLATFORM = featureBit(33);
export const VIRTIO_F_RING_PACKED = featureBit(34);
export const VIRTIO_F_IN_ORDER = featureBit(35);
export const VIRTIO_F_ORDER_PLATFORM = featureBit(36);
export const VIRTIO_F_SR_IOV = featureBit(37);
export const VIRTIO_F_NOTIFICATION_DATA = featureBit(38);
export const VIRTIO_F_NOTIF_CONFIG_DATA = featureBit(39);
export const VIRTIO_F_RING_RESET = featureBit(40);
export const VIRTIO_F_ADMIN_VQ = featureBit(41);

/** vhost: log all writes (dirty logging for migration); shares bit 26. */
export const VHOST_F_LOG_ALL = featureBit(26);

const NAMES: ReadonlyMap<number, string> = new Map<number, string>([
  [0, 'CSUM'], [1, 'GUEST_CSUM'], [2, 'CTRL_GUEST_OFFLOADS'], [3, 'MTU'], [5, 'MAC'], [6, 'GSO'],
  [7, 'GUEST_TSO4'], [8, 'GUEST_TSO6'], [9, 'GUEST_ECN'], [10, 'GUEST_UFO'], [11, 'HOST_TSO4'],
  [12, 'HOST_TSO6'], [13, 'HOST_ECN'], [14, 'HOST_UFO'], [15, 'MRG_RXBUF'], [16, 'STATUS'],
  [17, 'CTRL_VQ'], [18, 'CTRL_RX'], [19, 'CTRL_VLAN'], [20, 'CTRL_RX_EXTRA'], [21, 'GUEST_ANNOUNCE'],
  [22, 'MQ'], [23, 'CTRL_MAC_ADDR'], [24, 'NOTIFY_ON_EMPTY'], [26, 'LOG_ALL'], [27, 'ANY_LAYOUT'],
  [28, 'INDIRECT_DESC'], [29, 'EVENT_IDX'], [30, 'PROTOCOL_FEATURES'], [32, 'VERSION_1'],
  [33, 'ACCESS_PLATFORM'], [34, 'RING_PACKED'], [35, 'IN_ORDER'], [36, 'ORDER_PLATFORM'],
  [37, 'SR_IOV'], [38, 'NOTIFICATION_DATA'], [39, 'NOTIF_CONFIG_DATA'], [40, 'RING_RESET'],
  [41, 'ADMIN_VQ'], [54, 'GUEST_USO4'], [55, 'GUEST_USO6'], [56, 'HOST_USO'], [57, 'HASH_REPORT'],
  [59, 'GUEST_HDRLEN'], [60, 'RSS'], [61, 'RSC_EXT'], [62, 'STANDBY'], [63, 'SPEED_DUPLEX'],
]);

/** Name of one feature bit ('MRG_RXBUF'), or 'bit<n>' for bits we do not know. */
export function featureName(bit: number): string {
  return NAMES.get(bit) ?? `bit${bit}`;
}

/** Names of every bit set in `features`, lowest first (for logs and the control API). */
export function featureNames(features: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((features >> BigInt(bit)) & 1n) names.push(featureName(bit));
  }
  return names;
}
