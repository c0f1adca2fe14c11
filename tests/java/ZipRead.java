import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Enumeration;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;
import java.util.zip.ZipInputStream;

/**
 * Reads a ZIP archive with java.util.zip, for the reader matrix (tests/test_readers.py).
 *
 * <p>{@code java ZipRead file A.zip} uses ZipFile (the central directory); {@code java ZipRead stream A.zip}
 * uses ZipInputStream, which reads from the front and never seeks, as Android and many JVM services do. One
 * line per entry: the name's UTF-8 bytes in hex, the number of bytes read, their CRC-32 (computed here, not
 * taken from the archive) and the modification time in milliseconds since 1970 UTC.
 */
public final class ZipRead {
    public static void main(String[] args) throws IOException {
        byte[] buffer = new byte[1 << 20];
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out), false, "UTF-8");
        if (args[0].equals("file")) {
            try (ZipFile zip = new ZipFile(args[1])) {
                Enumeration<? extends ZipEntry> entries = zip.entries();
                while (entries.hasMoreElements()) {
                    ZipEntry entry = entries.nextElement();
                    try (InputStream in = zip.getInputStream(entry)) {
                        print(out, entry, in, buffer);
                    }
                }
            }
        } else {
            InputStream file = new BufferedInputStream(new FileInputStream(args[1]), 1 << 16);
            try (ZipInputStream zip = new ZipInputStream(file, StandardCharsets.UTF_8)) {
                ZipEntry entry;
                while ((entry = zip.getNextEntry()) != null) {
                    print(out, entry, zip, buffer);
                }
            }
        }
        out.flush();
    }

    private static void print(PrintStream out, ZipEntry entry, InputStream in, byte[] buffer) throws IOException {
        CRC32 crc = new CRC32();
        long size = 0;
        int n;
        while ((n = in.read(buffer)) > 0) {
            crc.update(buffer, 0, n);
            size += n;
        }
        StringBuilder name = new StringBuilder();
        for (byte b : entry.getName().getBytes(StandardCharsets.UTF_8)) {
            name.append(String.format("%02x", b & 0xff));
        }
        long modified = entry.getLastModifiedTime().toMillis();
        out.printf("%s\t%d\t%08x\t%d%n", name, size, crc.getValue(), modified);
    }
}
