import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Locale;
import javax.tools.Diagnostic;
import javax.tools.DiagnosticCollector;
import javax.tools.JavaCompiler;
import javax.tools.JavaFileObject;
import javax.tools.StandardJavaFileManager;
import javax.tools.ToolProvider;

/**
 * The static verification gate's compiler check for Java: compiles each named file on its own, in
 * one JVM, and prints one JSON line per file with its errors. Files are compiled separately so two
 * samples that both declare {@code class Main} do not collide, and one sample's syntax error does
 * not stop the others' semantic checks. No classpath, no source path, no annotation processing:
 * nothing but the JDK and the file itself is read, and nothing from the sample runs. Compilation
 * stops after flow analysis (missing returns, unassigned variables), before any class file.
 *
 * Run with the source launcher: java JavacBatch.java FILE...
 */
public final class JavacBatch {
    private static final List<String> OPTIONS = List.of(
        "-proc:none", "-implicit:none", "-nowarn", "-Xlint:none", "-encoding", "UTF-8",
        "-classpath", "", "-sourcepath", "", "-d", "classes", "-Xmaxerrs", "50",
        "-XDshould-stop.ifNoError=FLOW");

    public static void main(String[] args) throws Exception {
        JavaCompiler compiler = ToolProvider.getSystemJavaCompiler();
        try (StandardJavaFileManager files = compiler.getStandardFileManager(null, Locale.ROOT, StandardCharsets.UTF_8)) {
            for (String path : args) {
                DiagnosticCollector<JavaFileObject> collected = new DiagnosticCollector<>();
                compiler.getTask(null, files, collected, OPTIONS, null, files.getJavaFileObjects(path)).call();
                StringBuilder line = new StringBuilder("{\"file\":").append(quote(path)).append(",\"errors\":[");
                String separator = "";
                for (Diagnostic<? extends JavaFileObject> d : collected.getDiagnostics()) {
                    if (d.getKind() != Diagnostic.Kind.ERROR) {
                        continue;
                    }
                    line.append(separator).append("{\"line\":").append(d.getLineNumber())
                        .append(",\"code\":").append(quote(d.getCode()))
                        .append(",\"message\":").append(quote(d.getMessage(Locale.ROOT))).append('}');
                    separator = ",";
                }
                System.out.println(line.append("]}"));
            }
        }
    }

    /** A JSON string literal; control characters and lone surrogates are escaped. */
    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : (s == null ? "" : s).toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20 || Character.isSurrogate(c)) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
